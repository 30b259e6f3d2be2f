package admin

import (
	"slices"
	"strings"
	"sync"

	"github.com/ferrymq/ferry/consumer"
)

// Runner is what the admin API shows of a running consumer; a
// *consumer.Consumer is one.
type Runner interface {
	Group() string
	Member() string
	DLQTopic() string
	Healthy() error
	Stats() consumer.Stats
	PartitionStats() []consumer.PartitionStat
}

var _ Runner = (*consumer.Consumer)(nil)

// Registry holds the consumers a process runs, so that the API shows their
// live state: their partitions, buffers, parked keys and health. The zero
// value is ready; a nil *Registry holds nothing.
type Registry struct {
	mu      sync.Mutex
	running []Runner
}

// Add registers c until the returned function is called (when c stops).
func (r *Registry) Add(c Runner) (remove func()) {
	r.mu.Lock()
	r.running = append(r.running, c)
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if i := slices.Index(r.running, c); i >= 0 {
				r.running = slices.Delete(r.running, i, i+1)
			}
		})
	}
}

// list returns the registered consumers.
func (r *Registry) list() []Runner {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.running)
}

// dlqGroup reports whether topic is a dead-letter topic, and whose: a
// registered consumer's DLQ topic, or one named GROUP.dlq.
func (r *Registry) dlqGroup(topic string) (group string, ok bool) {
	for _, c := range r.list() {
		if c.DLQTopic() == topic {
			return c.Group(), true
		}
	}
	return strings.CutSuffix(topic, ".dlq")
}

// runs reports whether a registered consumer is in group.
func (r *Registry) runs(group string) bool {
	return slices.ContainsFunc(r.list(), func(c Runner) bool { return c.Group() == group })
}
