package admin

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Lag history bounds.
const (
	// DefaultLagInterval is how often ferry's own servers sample lag.
	DefaultLagInterval = 10 * time.Second
	// MaxLagSamples bounds the lag history kept per group: at
	// DefaultLagInterval, an hour.
	MaxLagSamples = 360
)

// LagHistory is a group's lag over time, as RecordLag sampled it.
type LagHistory struct {
	Group string `json:"group"`
	// Interval is the sampling interval ("" if nothing records lag in
	// this process: the service was started without RecordLag).
	Interval string `json:"interval"`
	// Samples are the newest MaxLagSamples, oldest first.
	Samples []LagSample `json:"samples"`
}

// LagSample is a group's lag at one time.
type LagSample struct {
	Time       time.Time      `json:"time"`
	Lag        uint64         `json:"lag"`
	Partitions []PartitionLag `json:"partitions"`
}

// PartitionLag is a group's lag in one partition.
type PartitionLag struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Lag       uint64 `json:"lag"`
}

// lagHistory holds the sampled lag of each group: one bounded ring each.
// RecordLag's loop is its only writer.
type lagHistory struct {
	mu     sync.Mutex
	every  time.Duration // 0: not recording
	groups map[string]*lagRing
}

// lagRing is a bounded ring of samples.
type lagRing struct {
	samples []LagSample // len <= MaxLagSamples
	next    int         // where the next sample goes once full
}

func (r *lagRing) add(s LagSample) {
	if len(r.samples) < MaxLagSamples {
		r.samples = append(r.samples, s)
		return
	}
	r.samples[r.next] = s
	r.next = (r.next + 1) % MaxLagSamples
}

// ordered returns the samples oldest first.
func (r *lagRing) ordered() []LagSample {
	out := make([]LagSample, 0, len(r.samples))
	out = append(out, r.samples[r.next:]...)
	return append(out, r.samples[:r.next]...)
}

// RecordLag samples every group's lag each interval (and once at the
// start) into a bounded history per group (MaxLagSamples), which the API
// serves at /groups/{group}/lag and the console charts, until ctx ends.
// A group that is gone at a sample is dropped. A process runs one
// RecordLag per Service; it returns ctx's error, or an error at once if
// one runs already.
func (s *Service) RecordLag(ctx context.Context, every time.Duration) error {
	if every <= 0 {
		return fmt.Errorf("lag sampling interval %v: want more than 0", every)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.lag.mu.Lock()
	if s.lag.every != 0 {
		s.lag.mu.Unlock()
		return fmt.Errorf("lag is recorded already, every %v", s.lag.every)
	}
	s.lag.every = every
	s.lag.mu.Unlock()
	defer func() {
		// What it sampled goes with it: a later RecordLag, at another
		// interval maybe, starts a history of its own.
		s.lag.mu.Lock()
		s.lag.every = 0
		clear(s.lag.groups)
		s.lag.mu.Unlock()
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := s.sampleLag(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("admin: lag not sampled", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// sampleLag adds one sample to each group's history. A group whose lag
// cannot be read misses this sample (its history keeps the ones before);
// the first such error is returned.
func (s *Service) sampleLag(ctx context.Context) error {
	adm, err := s.admin("sampling lag")
	if err != nil {
		return err
	}
	groups, err := adm.Groups(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	samples := map[string]LagSample{}
	var failed map[string]bool
	var first error
	for name, offs := range groups {
		g, err := s.group(ctx, name, offs)
		if err != nil {
			if first == nil {
				first = fmt.Errorf("group %s: %w", name, err)
			}
			if failed == nil {
				failed = map[string]bool{}
			}
			failed[name] = true
			continue
		}
		smp := LagSample{Time: now, Partitions: make([]PartitionLag, 0, len(g.Partitions))}
		for _, p := range g.Partitions {
			smp.Lag += p.Lag
			smp.Partitions = append(smp.Partitions, PartitionLag{Topic: p.Topic, Partition: p.Partition, Lag: p.Lag})
		}
		samples[name] = smp
	}
	s.lag.mu.Lock()
	defer s.lag.mu.Unlock()
	for name := range s.lag.groups {
		if _, ok := samples[name]; !ok && !failed[name] {
			delete(s.lag.groups, name) // the group is gone
		}
	}
	for name, smp := range samples {
		r := s.lag.groups[name]
		if r == nil {
			r = &lagRing{}
			s.lag.groups[name] = r
		}
		r.add(smp)
	}
	return first
}

// LagHistory returns the lag RecordLag sampled for group (no samples if
// it does not run, or has not seen the group): the samples of the
// RecordLag running now, which forgets them when it ends.
func (s *Service) LagHistory(group string) LagHistory {
	s.lag.mu.Lock()
	defer s.lag.mu.Unlock()
	h := LagHistory{Group: group, Samples: []LagSample{}}
	if s.lag.every != 0 {
		h.Interval = s.lag.every.String()
	}
	if r := s.lag.groups[group]; r != nil {
		h.Samples = r.ordered()
	}
	return h
}
