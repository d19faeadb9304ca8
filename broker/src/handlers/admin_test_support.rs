//! Helpers for the admin handlers' unit tests: a broker on a temporary data
//! dir, request contexts, and a check that a response encodes.

use super::RequestContext;
use crate::config::{BrokerConfig, ServeArgs};
use crate::metadata::now_ms;
use crate::state::Broker;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_protocol::compression::Compression;
use weir_protocol::records::BatchBuilder;

pub struct TestBroker {
    pub broker: Arc<Broker>,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestBroker {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

pub fn broker() -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::load(&ServeArgs {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    TestBroker {
        broker: Broker::open(config).unwrap(),
        dir,
    }
}

/// Reopens the broker on the same data dir (a restart).
pub fn reopen(tb: TestBroker) -> TestBroker {
    let TestBroker { broker, dir } = tb;
    broker.shutdown().unwrap();
    drop(broker);
    let config = BrokerConfig::load(&ServeArgs {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    TestBroker {
        broker: Broker::open(config).unwrap(),
        dir,
    }
}

pub fn ctx(api_key: ApiKey, version: i16) -> RequestContext {
    RequestContext {
        header: RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version),
        api_key,
        peer: "127.0.0.1:1".parse().unwrap(),
    }
}

/// Every version advertised in ApiVersions for `api_key`.
pub fn advertised_versions(api_key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let (min, max) = super::api_versions::advertised(api_key).expect("advertised");
    min..=max
}

/// Panics when the response cannot be encoded at `version`.
pub fn assert_encodes(api_key: ApiKey, version: i16, body: ResponseKind) {
    if let Err(e) = weir_protocol::request::encode_response(api_key, version, 7, &body) {
        panic!("{api_key:?} v{version} does not encode: {e}");
    }
}

pub fn create(broker: &Broker, name: &str, partitions: i32) {
    broker
        .create_topic(name, partitions, 1, BTreeMap::new(), false)
        .unwrap();
}

/// Appends `count` single-record batches to a partition.
pub fn append(broker: &Broker, topic: &str, index: i32, count: usize) {
    let partition = broker.partition(topic, index).unwrap();
    for i in 0..count {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(now_ms(), None, Some(format!("v{i}").as_bytes()), &[]);
        let mut bytes = b.build().unwrap();
        partition.append(&mut bytes, now_ms()).unwrap();
    }
}
