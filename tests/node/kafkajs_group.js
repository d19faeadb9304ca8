#!/usr/bin/env node
// kafkajs 2.2.4 consumer-group member against Weir, driven by tests/e2e/test_groups.py
// (test_kafkajs_group_survives_sigkill).
//
// Arguments: one JSON object, as argv[2] or in the env var WEIR_JS_ARGS:
//   {"bootstrap": "127.0.0.1:9092", "topic": "t", "group": "g", "name": "js0",
//    "out": "/path/events.log", "stop": "/path/stop-file", "pauseMs": 1}
// Appends one line per event to args.out, written synchronously (so a SIGKILL loses no line of a
// record that may have been committed):
//   R partition offset     a record delivered to eachMessage
//   A p,p,...              partitions assigned by a rebalance (GROUP_JOIN)
//   E message              an error (crash event, or the failure of main)
//   X                      clean exit after consumer.disconnect()
// The consumer commits automatically (every 500 ms and after each batch) and stops when the file
// args.stop exists.
'use strict'

const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')

const a = JSON.parse(process.argv[2] || process.env.WEIR_JS_ARGS)
const fd = fs.openSync(a.out, 'a')
const log = line => fs.writeSync(fd, line + '\n')
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function main() {
  const kafka = new Kafka({
    clientId: a.name,
    brokers: [a.bootstrap],
    logLevel: logLevel.ERROR,
    connectionTimeout: 5000,
    requestTimeout: 30000,
    retry: { retries: 10 },
  })
  const consumer = kafka.consumer({
    groupId: a.group, sessionTimeout: 10000, heartbeatInterval: 1000, rebalanceTimeout: 20000,
  })
  consumer.on(consumer.events.GROUP_JOIN, e => {
    const parts = (e.payload.memberAssignment[a.topic] || []).slice().sort((x, y) => x - y)
    log(`A ${parts.join(',') || '-'}`)
  })
  consumer.on(consumer.events.CRASH, e => log(`E crash:${String(e.payload.error).replace(/\s+/g, '_')}`))
  await consumer.connect()
  await consumer.subscribe({ topic: a.topic, fromBeginning: true })
  await consumer.run({
    autoCommit: true,
    autoCommitInterval: 500,
    eachMessage: async ({ partition, message }) => {
      log(`R ${partition} ${message.offset}`)
      if (a.pauseMs) await sleep(a.pauseMs)
    },
  })
  while (!fs.existsSync(a.stop)) await sleep(200)
  await consumer.disconnect()
  log('X')
}

main().then(
  () => process.exit(0),
  e => { log(`E ${String(e && e.stack ? e.stack : e).replace(/\s+/g, '_')}`); process.exit(1) })
