// Package metrics exports ferry's measurements to Prometheus: the embedded
// log's group commits, fsyncs and append latency; a consumer's lifecycle
// events (handled, retried, dead-lettered, scheduled, released) with
// handler latency; its buffers, parked keys, breaker state and lag per
// partition, and whether it is healthy; dead-letter queue depth by class;
// whether the embedded log accepts writes; and the outbox relay's
// throughput and lag. Everything registers on the registry the caller
// passes (never the global one), and labels are bounded: group, topic,
// partition, class — never a message ID or key.
//
//	reg := prometheus.NewRegistry()
//	m, _ := metrics.New(reg)
//	log, _ := commitlog.Open(ctx, dir, commitlog.WithObserver(m))
//	m.WatchLog(log)
//	c, _ := consumer.New(b, "billing", topics, h, consumer.WithObserver(m.ConsumerObserver("billing")))
//	m.WatchConsumer("billing", c, b)
//	http.ListenAndServe(addr, metrics.Handler(reg, metrics.Check("log", log.Healthy), metrics.Check("billing", c.Healthy)))
package metrics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/outbox"
	"github.com/ferrymq/ferry/retry"
)

// Metrics holds ferry's collectors on one registry. It implements
// commitlog.Observer.
type Metrics struct {
	reg prometheus.Registerer

	groupCommits   prometheus.Counter
	appended       prometheus.Counter
	appendLatency  prometheus.Histogram
	fsyncLatency   prometheus.Histogram
	commitWrite    prometheus.Histogram
	groupMessages  prometheus.Histogram
	groupBytes     prometheus.Histogram
	events         *prometheus.CounterVec
	retries        *prometheus.CounterVec
	deadLetters    *prometheus.CounterVec
	handleLatency  *prometheus.HistogramVec
	relayed        *prometheus.CounterVec
	relayFailures  *prometheus.CounterVec
	relayLag       *prometheus.GaugeVec
	messagesLogged prometheus.Counter

	brokerRequests *prometheus.CounterVec
	brokerErrors   *prometheus.CounterVec
	brokerLatency  *prometheus.HistogramVec
	brokerConns    prometheus.Gauge
	brokerBytes    *prometheus.CounterVec

	log atomic.Pointer[commitlog.Log] // the log WatchLog watches, or nil
}

// latencyBuckets spans 50µs to 10s.
var latencyBuckets = prometheus.ExponentialBuckets(50e-6, 2.5, 14)

// New creates ferry's collectors and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		return nil, fmt.Errorf("metrics: a registry is required (ferry never registers on the global one)")
	}
	m := &Metrics{
		reg: reg,
		groupCommits: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_log_group_commits_total",
			Help: "Group commits written by the embedded log (one write, at most one fsync each)."}),
		appended: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_log_appends_total",
			Help: "Appends (Append, Commit and AppendAsync calls) acknowledged by the embedded log."}),
		messagesLogged: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_log_messages_total",
			Help: "Messages written by the embedded log (duplicates dropped by the dedup window excluded)."}),
		appendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_log_append_duration_seconds",
			Help: "Time from an append call to its acknowledgement.", Buckets: latencyBuckets}),
		fsyncLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_log_fsync_duration_seconds",
			Help: "Duration of the embedded log's fsyncs of its active segment.", Buckets: latencyBuckets}),
		commitWrite: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_log_group_commit_duration_seconds",
			Help: "Duration of writing one group commit, fsync included.", Buckets: latencyBuckets}),
		groupMessages: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_log_group_commit_messages",
			Help: "Messages per group commit.", Buckets: prometheus.ExponentialBuckets(1, 4, 9)}),
		groupBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_log_group_commit_bytes",
			Help: "Bytes per group commit.", Buckets: prometheus.ExponentialBuckets(256, 4, 10)}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_consumer_events_total",
			Help: "Lifecycle events of consumed messages: handled, retried, dead-lettered, abandoned, scheduled, released (attempts started = handled + retried + dead-lettered + abandoned)."}, []string{"group", "topic", "event"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_consumer_retries_total",
			Help: "Failed attempts followed by a retry, by failure class."}, []string{"group", "topic", "class"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_consumer_dead_letters_total",
			Help: "Messages written to the dead-letter queue, by class (parked: behind an earlier dead letter of their key)."}, []string{"group", "topic", "class"}),
		handleLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ferry_consumer_handle_duration_seconds",
			Help: "Duration of handler attempts, by outcome (handled, retried).", Buckets: latencyBuckets}, []string{"group", "outcome"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_outbox_relayed_total",
			Help: "Outbox messages published and marked sent."}, []string{"relay"}),
		relayFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_outbox_relay_failures_total",
			Help: "Outbox relay batches that failed (retried with backoff)."}, []string{"relay"}),
		relayLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_outbox_relay_lag_seconds",
			Help: "Age of the oldest message in the outbox relay's last batch."}, []string{"relay"}),
		brokerRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_broker_requests_total",
			Help: "Kafka requests ferry serve answered, by API."}, []string{"api"}),
		brokerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_broker_request_errors_total",
			Help: "Kafka requests whose answer carried an error code, by API."}, []string{"api"}),
		brokerLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ferry_broker_request_duration_seconds",
			Help: "Time from reading a Kafka request to its answer being ready (a fetch's long poll included), by API.", Buckets: latencyBuckets}, []string{"api"}),
		brokerConns: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_broker_connections",
			Help: "Open client connections of ferry serve."}),
		brokerBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_broker_bytes_total",
			Help: "Bytes read from and written to Kafka clients (direction in, out)."}, []string{"direction"}),
	}
	for _, c := range []prometheus.Collector{m.brokerRequests, m.brokerErrors, m.brokerLatency, m.brokerConns, m.brokerBytes, m.groupCommits, m.appended, m.messagesLogged, m.appendLatency, m.fsyncLatency, m.commitWrite,
		m.groupMessages, m.groupBytes, m.events, m.retries, m.deadLetters, m.handleLatency, m.relayed, m.relayFailures, m.relayLag, logCollector{m}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	return m, nil
}

// GroupCommit implements commitlog.Observer.
func (m *Metrics) GroupCommit(appends, messages, bytes int, write, fsync time.Duration) {
	m.groupCommits.Inc()
	m.messagesLogged.Add(float64(messages))
	m.groupMessages.Observe(float64(messages))
	m.groupBytes.Observe(float64(bytes))
	m.commitWrite.Observe(write.Seconds())
	if fsync > 0 {
		m.fsyncLatency.Observe(fsync.Seconds())
	}
}

// WatchLog exports the health of the embedded log l on every scrape:
// ferry_log_healthy is 1 while l accepts writes and 0 once l.Healthy
// reports an error: the log failed (after an I/O error, such as a full
// disk, it refuses writes until it is reopened) or was closed. A later
// call replaces l, for a process that reopens its log; before the first,
// ferry_log_healthy is not exported.
func (m *Metrics) WatchLog(l *commitlog.Log) { m.log.Store(l) }

var descLogHealthy = prometheus.NewDesc("ferry_log_healthy", "Whether the embedded log accepts writes: 1 yes, 0 it has failed (an I/O error; it refuses writes until reopened) or is closed.", nil, nil)

// logCollector exports ferry_log_healthy for the log WatchLog watches.
type logCollector struct{ m *Metrics }

func (lc logCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descLogHealthy }

func (lc logCollector) Collect(ch chan<- prometheus.Metric) {
	l := lc.m.log.Load()
	if l == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descLogHealthy, prometheus.GaugeValue, healthValue(l.Healthy()))
}

// healthValue is 1 for a nil error from a health check, 0 for any other.
func healthValue(err error) float64 {
	if err != nil {
		return 0
	}
	return 1
}

// Appended implements commitlog.Observer.
func (m *Metrics) Appended(latency time.Duration) {
	m.appended.Inc()
	m.appendLatency.Observe(latency.Seconds())
}

// ConsumerObserver returns the observer to give consumer.WithObserver for
// a consumer of group (combine it with others with consumer.Observers).
// Label combinations are resolved once: an event costs an atomic load, a
// map lookup and an atomic add.
func (m *Metrics) ConsumerObserver(group string) func(consumer.Event) {
	handled := m.handleLatency.WithLabelValues(group, "handled")
	retried := m.handleLatency.WithLabelValues(group, "retried")
	type key struct{ topic, kind, class string }
	var (
		mu    sync.Mutex
		cache atomic.Pointer[map[key][]prometheus.Counter] // copied on write
	)
	cache.Store(&map[key][]prometheus.Counter{})
	counters := func(k key) []prometheus.Counter {
		if cs, ok := (*cache.Load())[k]; ok {
			return cs
		}
		mu.Lock()
		defer mu.Unlock()
		old := *cache.Load()
		if cs, ok := old[k]; ok {
			return cs
		}
		cs := []prometheus.Counter{m.events.WithLabelValues(group, k.topic, k.kind)}
		switch consumer.EventKind(k.kind) {
		case consumer.EventRetried:
			cs = append(cs, m.retries.WithLabelValues(group, k.topic, k.class))
		case consumer.EventDeadLettered:
			cs = append(cs, m.deadLetters.WithLabelValues(group, k.topic, k.class))
		}
		next := make(map[key][]prometheus.Counter, len(old)+1)
		for k, v := range old {
			next[k] = v
		}
		next[k] = cs
		cache.Store(&next)
		return cs
	}
	return func(e consumer.Event) {
		if e.Kind == consumer.EventStarted {
			// Every attempt ends in another event: started is their sum,
			// and counting it would cost a contended atomic per message.
			return
		}
		k := key{kind: string(e.Kind)}
		if e.Message != nil {
			k.topic = e.Message.Topic
		}
		if e.Kind == consumer.EventRetried || e.Kind == consumer.EventDeadLettered {
			k.class = string(e.Class)
		}
		for _, c := range counters(k) {
			c.Inc()
		}
		switch e.Kind {
		case consumer.EventHandled:
			handled.Observe(e.Duration.Seconds())
		case consumer.EventRetried:
			retried.Observe(e.Duration.Seconds())
		}
	}
}

// RelayObserver returns the observer to give outbox.WithObserver for a
// relay named name.
func (m *Metrics) RelayObserver(name string) func(outbox.RelayStats) {
	relayed, failures, lag := m.relayed.WithLabelValues(name), m.relayFailures.WithLabelValues(name), m.relayLag.WithLabelValues(name)
	return func(s outbox.RelayStats) {
		if s.Err != nil {
			failures.Inc()
			return
		}
		relayed.Add(float64(s.Published))
		lag.Set(s.Lag.Seconds())
	}
}

// scrapeTimeout bounds the backend calls a scrape makes (partition ends,
// DLQ scans).
const scrapeTimeout = 5 * time.Second

// WatchConsumer exports a running consumer's state on every scrape: its
// in-flight, buffered, waiting and pending messages, parked keys and
// messages, breaker state (0 closed, 1 half-open, 2 open), health (1 when
// c.Healthy reports none of its errors: running, heartbeating, breaker not
// open; else 0) and, per assigned partition, its lag (the partition's end
// minus the committed offset, read from b).
func (m *Metrics) WatchConsumer(group string, c *consumer.Consumer, b backend.Backend) error {
	// The group is a constant label of the collector's own descriptions,
	// so that consumers of several groups register side by side.
	g := prometheus.Labels{"group": group}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, g)
	}
	return m.reg.Register(&consumerCollector{c: c, b: b,
		inFlight:       desc("ferry_consumer_in_flight", "Handler calls running or waiting to retry."),
		buffered:       desc("ferry_consumer_buffered", "Messages fetched and not yet finished."),
		waiting:        desc("ferry_consumer_waiting", "Messages waiting behind their key's message in flight."),
		parkedKeys:     desc("ferry_consumer_parked_keys", "Keys parked behind a dead letter or scheduled retry."),
		parkedMessages: desc("ferry_consumer_parked_messages", "Messages in the DLQ behind parked keys."),
		breaker:        desc("ferry_consumer_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open."),
		healthy: desc("ferry_consumer_healthy", "Whether the consumer is healthy: 1 running with a live group membership and its breaker not open, "+
			"0 otherwise (its Healthy error)."),
		lag:       desc("ferry_consumer_lag_messages", "Messages between the committed offset and the end of a partition.", "topic", "partition"),
		committed: desc("ferry_consumer_committed_offset", "Committed offset of an assigned partition.", "topic", "partition"),
	})
}

type consumerCollector struct {
	c *consumer.Consumer
	b backend.Backend
	// The descriptions of its metrics, with its group as a label.
	inFlight, buffered, waiting, parkedKeys, parkedMessages, breaker, healthy, lag, committed *prometheus.Desc
}

func (cc *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cc.inFlight, cc.buffered, cc.waiting, cc.parkedKeys, cc.parkedMessages, cc.breaker, cc.healthy, cc.lag, cc.committed} {
		ch <- d
	}
}

func (cc *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	st := cc.c.Stats()
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	gauge(cc.inFlight, st.InFlight)
	gauge(cc.buffered, st.Buffered)
	gauge(cc.waiting, st.Waiting)
	gauge(cc.parkedKeys, st.ParkedKeys)
	gauge(cc.parkedMessages, st.ParkedMessages)
	if st.Breaker != "" {
		gauge(cc.breaker, map[string]int{"closed": 0, "half-open": 1, "open": 2}[st.Breaker])
	}
	ch <- prometheus.MustNewConstMetric(cc.healthy, prometheus.GaugeValue, healthValue(cc.c.Healthy()))
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	for _, p := range cc.c.PartitionStats() {
		part := strconv.Itoa(int(p.Partition))
		gauge(cc.committed, int(p.Committed), p.Topic, part)
		if _, end, err := cc.b.Bounds(ctx, p.TopicPartition); err == nil && end >= p.Committed {
			gauge(cc.lag, int(end-p.Committed), p.Topic, part)
		}
	}
}

// WatchDLQ exports the dead entries of a dead-letter queue by class
// (ferry_dlq_entries{dlq,class}). Every class a dead letter can have is
// exported, 0 where the queue holds none, so that an alert sees a queue
// that was empty grow (a series that appears with its first entry has no
// earlier value to compare with); a queue whose topic does not exist yet
// (nothing was dead-lettered) is empty. Reading a DLQ scans its topic, so a
// scrape reuses the last count for up to refresh.
func (m *Metrics) WatchDLQ(name string, q *dlq.Queue, refresh time.Duration) error {
	// The queue's name is a constant label, so that queues register side
	// by side.
	return m.reg.Register(&dlqCollector{name: name, q: q, refresh: refresh,
		desc: prometheus.NewDesc("ferry_dlq_entries", "Dead entries (not redriven, not purged) in a dead-letter queue, by class.",
			[]string{"class"}, prometheus.Labels{"dlq": name})})
}

// dlqClasses are the classes of dead letters ferry writes: each is
// exported for a watched queue even while it has no entry of that class.
var dlqClasses = []retry.Class{retry.ClassTransient, retry.ClassPermanent, retry.ClassDecode, retry.ClassTimeout, retry.ClassPanic, dlq.ClassParked, dlq.ClassScheduled}

type dlqCollector struct {
	name    string
	q       *dlq.Queue
	refresh time.Duration
	desc    *prometheus.Desc

	mu     sync.Mutex
	at     time.Time
	counts map[string]int
}

func (dc *dlqCollector) Describe(ch chan<- *prometheus.Desc) { ch <- dc.desc }

func (dc *dlqCollector) Collect(ch chan<- prometheus.Metric) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.counts == nil || time.Since(dc.at) >= dc.refresh {
		ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
		entries, err := dc.q.List(ctx, dlq.Filter{})
		cancel()
		if errors.Is(err, ferry.ErrTopicNotFound) {
			entries, err = nil, nil // nothing was ever dead-lettered: empty
		}
		if err == nil {
			dc.counts, dc.at = make(map[string]int, len(dlqClasses)), time.Now()
			for _, class := range dlqClasses {
				dc.counts[string(class)] = 0
			}
			for _, e := range entries {
				dc.counts[string(e.Class)]++
			}
		}
	}
	for class, n := range dc.counts {
		ch <- prometheus.MustNewConstMetric(dc.desc, prometheus.GaugeValue, float64(n), class)
	}
}

// Request implements broker.Observer: one answered Kafka request.
func (m *Metrics) Request(api string, d time.Duration, failed bool) {
	m.brokerRequests.WithLabelValues(api).Inc()
	if failed {
		m.brokerErrors.WithLabelValues(api).Inc()
	}
	m.brokerLatency.WithLabelValues(api).Observe(d.Seconds())
}

// Connection implements broker.Observer: a client connection opened
// (delta 1) or closed (-1).
func (m *Metrics) Connection(delta int) { m.brokerConns.Add(float64(delta)) }

// Bytes implements broker.Observer: bytes read from and written to clients.
func (m *Metrics) Bytes(in, out int) {
	if in > 0 {
		m.brokerBytes.WithLabelValues("in").Add(float64(in))
	}
	if out > 0 {
		m.brokerBytes.WithLabelValues("out").Add(float64(out))
	}
}

// BrokerRequests returns the counter of answered requests of one API (for
// tests and dashboards built in code).
func (m *Metrics) BrokerRequests(api string) prometheus.Counter {
	return m.brokerRequests.WithLabelValues(api)
}
