#!/usr/bin/env node
// kafkajs 2.2.4 round trip against Weir, driven by tests/e2e/test_roundtrip.py.
//
// Arguments: one JSON object, as argv[2] or in the env var WEIR_JS_ARGS:
//   {"bootstrap": "127.0.0.1:9092", "topic": "t", "codec": "zstd", "n": 100000,
//    "bigIndex": 4242, "bigSize": 1048576, "partitions": 8}
// Writes one JSON object to the file args.out (or stdout if not given):
//   {"produced": {p: [[offset, i], ...]}, "consumed": {p: [[offset, key, valueDigest, [[hk, hv], ...]], ...]},
//    "timings": {...}}
// or {"error": "..."} with exit code 1.
//
// Record content rules are the same as tests/e2e/util.py (keep both in sync):
//   key = `k${i % 1000}`; value = `${codec}-${i}`, null when i % 100 == 0, 1 MiB of SHA-256 counter-mode
//   bytes for i == bigIndex; headers [["idx", `${i}`], ["codec", codec]] when i % 10 == 0.
//
// kafkajs has no assign()-style consumer (its consumer always joins a group, which Weir does not
// implement yet), so records are read with kafkajs's own protocol layer: cluster + broker.fetch()
// + consumer Batch (which drops records before the fetch offset, as the consumer does).
'use strict'

const crypto = require('crypto')
const { Kafka, CompressionTypes, CompressionCodecs, Partitioners, logLevel } = require('kafkajs')
const SnappyCodec = require('kafkajs-snappy')
const LZ4Codec = require('kafkajs-lz4')
const ZstdCodec = require('@kafkajs/zstd')
const Batch = require('kafkajs/src/consumer/batch')

CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec
CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec
CompressionCodecs[CompressionTypes.ZSTD] = ZstdCodec()

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
}

function bigValue(codec, i, size) {
  const parts = []
  let len = 0
  for (let j = 0; len < size; j++) {
    const d = crypto.createHash('sha256').update(`${codec}-${i}-${j}`).digest()
    parts.push(d)
    len += d.length
  }
  return Buffer.concat(parts).subarray(0, size)
}

function makeMessage(a, i, big) {
  const m = { key: `k${i % 1000}` }
  if (i % 100 === 0) m.value = null
  else if (i === a.bigIndex) m.value = big
  else m.value = `${a.codec}-${i}`
  if (i % 10 === 0) m.headers = { idx: `${i}`, codec: a.codec }
  return m
}

function digestValue(v) {
  if (v === null || v === undefined) return null
  if (v.length > 256) return `sha256:${crypto.createHash('sha256').update(v).digest('hex')}:len=${v.length}`
  return v.toString('utf8')
}

function headerList(h) {
  if (!h) return []
  const out = []
  for (const [k, v] of Object.entries(h)) {
    for (const x of Array.isArray(v) ? v : [v]) out.push([k, x === null ? null : Buffer.from(x).toString('utf8')])
  }
  return out
}

async function main() {
  const a = JSON.parse(process.argv[2] || process.env.WEIR_JS_ARGS)
  const partitions = a.partitions || 8
  const timings = {}
  const kafka = new Kafka({
    clientId: 'weir-e2e-kafkajs',
    brokers: [a.bootstrap],
    logLevel: logLevel.ERROR,
    connectionTimeout: 5000,
    requestTimeout: 60000,
    retry: { retries: 5 },
  })

  // ---- admin: create the topic
  let t0 = Date.now()
  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({
    waitForLeaders: true,
    timeout: 30000,
    topics: [{
      topic: a.topic, numPartitions: partitions, replicationFactor: 1,
      configEntries: [{ name: 'max.message.bytes', value: '4194304' }],
    }],
  })
  if (!created) throw new Error('createTopics returned false (topic already existed?)')
  const meta = await admin.fetchTopicMetadata({ topics: [a.topic] })
  const partitionMetadata = meta.topics[0].partitions
  if (partitionMetadata.length !== partitions) {
    throw new Error(`metadata shows ${partitionMetadata.length} partitions, expected ${partitions}`)
  }
  await admin.disconnect()
  timings.create_topic_s = (Date.now() - t0) / 1000

  // ---- produce: explicit partitions from kafkajs's default (Java-compatible murmur2) partitioner,
  // sequential send() calls, so each partition's records in one call get baseOffset, baseOffset+1, ...
  t0 = Date.now()
  const big = bigValue(a.codec, a.bigIndex, a.bigSize)
  const partitioner = Partitioners.DefaultPartitioner()
  const producer = kafka.producer({ allowAutoTopicCreation: false, idempotent: false })
  await producer.connect()
  const produced = {}
  const CHUNK = 5000
  for (let start = 0; start < a.n; start += CHUNK) {
    const end = Math.min(a.n, start + CHUNK)
    const messages = []
    const byPartition = {}
    for (let i = start; i < end; i++) {
      const m = makeMessage(a, i, big)
      m.partition = partitioner({ topic: a.topic, partitionMetadata, message: m })
      ;(byPartition[m.partition] = byPartition[m.partition] || []).push(i)
      messages.push(m)
    }
    const res = await producer.send({
      topic: a.topic, messages, acks: -1, timeout: 60000, compression: CODECS[a.codec],
    })
    for (const r of res) {
      if (r.errorCode !== 0) throw new Error(`produce error ${r.errorCode} on partition ${r.partition}`)
      const idx = byPartition[r.partition] || []
      const base = Number(r.baseOffset)
      const list = (produced[r.partition] = produced[r.partition] || [])
      idx.forEach((i, k) => list.push([base + k, i]))
      delete byPartition[r.partition]
    }
    const missing = Object.keys(byPartition)
    if (missing.length) throw new Error(`no produce result for partitions ${missing}`)
  }
  await producer.disconnect()
  timings.produce_s = (Date.now() - t0) / 1000

  // ---- consume from the beginning with kafkajs's Fetch implementation
  t0 = Date.now()
  const sym = Object.getOwnPropertySymbols(kafka).find(s => s.description === 'private:Kafka:createCluster')
  const cluster = kafka[sym]({ allowAutoTopicCreation: false, isolationLevel: 1 })
  await cluster.connect()
  await cluster.addTargetTopic(a.topic)
  await cluster.refreshMetadata()
  const consumed = {}
  const next = {}
  const ends = {}
  for (let p = 0; p < partitions; p++) {
    next[p] = 0
    ends[p] = (produced[p] || []).length
    consumed[p] = []
  }
  const deadline = Date.now() + 120000
  const leaders = cluster.findLeaderForPartitions(a.topic, [...Array(partitions).keys()])
  while (Date.now() < deadline) {
    const pending = Object.keys(next).map(Number).filter(p => next[p] < ends[p])
    if (!pending.length) break
    for (const [nodeId, parts] of Object.entries(leaders)) {
      const want = parts.filter(p => pending.includes(p))
      if (!want.length) continue
      const broker = await cluster.findBroker({ nodeId })
      const { responses } = await broker.fetch({
        replicaId: -1, isolationLevel: 1, maxWaitTime: 100, minBytes: 1, maxBytes: 52428800,
        topics: [{ topic: a.topic, partitions: want.map(p => ({ partition: p, fetchOffset: String(next[p]), maxBytes: 1048576 })) }],
      })
      for (const { partitions: pdata } of responses) {
        for (const pd of pdata) {
          if (pd.errorCode) throw new Error(`fetch error ${pd.errorCode} on partition ${pd.partition}`)
          const batch = new Batch(a.topic, String(next[pd.partition]), pd)
          for (const m of batch.messages) {
            consumed[pd.partition].push([Number(m.offset), m.key === null ? null : m.key.toString('utf8'),
              digestValue(m.value), headerList(m.headers)])
            next[pd.partition] = Number(m.offset) + 1
          }
        }
      }
    }
  }
  await cluster.disconnect()
  timings.consume_s = (Date.now() - t0) / 1000
  return { produced, consumed, timings }
}

// The result goes to the file named by "out" if given (large results), else to stdout; exit only
// once it is written (process.exit() right after a write to a pipe truncates the output).
function finish(result, code) {
  const a = JSON.parse(process.argv[2] || process.env.WEIR_JS_ARGS || '{}')
  const text = JSON.stringify(result)
  if (a.out) {
    require('fs').writeFileSync(a.out, text)
    process.exit(code)
  } else {
    process.stdout.write(text, () => process.exit(code))
  }
}

main().then(
  r => finish(r, 0),
  e => finish({ error: String(e && e.stack ? e.stack : e) }, 1))
