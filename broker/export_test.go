package broker

import "github.com/ferrymq/ferry"

// SequenceID is the message ID the broker derives for an idempotent
// producer's record at seq (for tests that seed the log with a producer's
// history).
func SequenceID(pid int64, epoch int16, topic string, partition int32, seq int64) ferry.ID {
	return sequenceID(sequenceScope(pid, epoch, topic, partition), seq)
}
