// Package broker serves a commitlog over the Kafka wire protocol: any Kafka
// client (franz-go, librdkafka and kcat, the Java client) produces to and
// consumes from the embedded log, and ferry's own runtime reaches it
// through backend/kafka, so several processes share one log.
//
// It is one node: the log's guarantees are the broker's (every record a
// produce with acks ≥ 1 acknowledged is fsynced first, with the log's
// group commit), and replication is left to the backends for Kafka and
// JetStream. Kafka topics and partitions are the log's, and Kafka offsets
// are the log's offsets.
//
// A connection's requests are read one after another and answered in the
// order they came, as Kafka does; a produce request is queued to the log as
// it is read, so the requests one connection pipelines share the log's
// group commits, and a slow request (a long-polling fetch, a join waiting
// for its group) does not stop the next from being read, only from being
// answered before it. In-flight requests per connection are bounded, and
// so is a request's size: beyond them the connection stops being read.
//
// Records map to messages both ways: key, value, headers and timestamp
// carry over. A message's ID comes from the record's "ferry-id" header
// (or a CloudEvents "ce-id"); for an idempotent producer it is derived
// from the producer ID, epoch, partition and sequence, so a retried batch
// is deduplicated by the log even across restarts; else the log assigns
// one. Fetched records carry their message's ID in "ferry-id".
package broker
