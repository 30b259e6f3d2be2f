// Package bench runs ferry's side-by-side benchmark scenarios (ferry bench):
// ferry and its peers in the same process, on the same disk, in one run.
//
//   - publish: 256-byte messages from 1, 16 and 64 synchronous publishers,
//     ferry's embedded log (fsync before ack) vs an in-process NATS
//     JetStream file store in its default mode and with sync_always;
//   - publish-pipelined: the same with 64 publishers keeping 16 publishes
//     in flight each (AppendAsync vs PublishAsync);
//   - append-vs-disk: batched durable appends vs the disk's own sequential
//     write+fsync bandwidth, measured here;
//   - consume: the runtime with a no-op handler, and with a 1 ms handler
//     over 10k keys at concurrency 64 against the Little's-law bound;
//   - latency: publish acknowledgement and publish-to-handler latency at a
//     fixed offered rate;
//   - router: the runtime vs Watermill's router with its retry middleware,
//     each on its in-memory transport, no-op handler;
//   - serve: ferry serve (package broker, in this process) driven by
//     franz-go producers and a consumer, vs JetStream driven by nats.go's
//     PublishAsync: produce throughput, ack latency at a fixed rate, and
//     the process's memory under a backlog;
//   - redis, rabbitmq, rabbitmq-stream: the durable peers that run as
//     services (a redis-server the bench starts with appendfsync always,
//     the machine's RabbitMQ with a fresh quorum or stream queue), 64
//     publishers with 16 in flight each and a consumer, against ferry's
//     AppendAsync and runtime measured once in the same run;
//   - river: River on the machine's PostgreSQL in a fresh schema: inserts,
//     a no-op job, and 1% of jobs failing twice, each beside ferry doing
//     the same.
//
// Each line says whether its system acknowledged only after an fsync
// (Result.FsyncAck). A peer that cannot run here is listed in
// Report.Unavailable with the reason, and the run goes on.
package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/commitlog"
)

// Options size a run.
type Options struct {
	Dir   string   // where the disk scenarios write (a temporary directory inside)
	Quick bool     // a smoke run: small sizes, well under a minute
	Only  []string // run only these scenarios (all if empty): names from Scenarios, or "peers"
	// RabbitMQURL and PostgresDSN locate the RabbitMQ and PostgreSQL
	// peers (default: the machine's, DefaultRabbitMQURL and
	// DefaultPostgresDSN).
	RabbitMQURL, PostgresDSN string
	// Progress, if set, is told each scenario's name as it starts.
	Progress func(scenario string)
}

// Result is one measured line.
type Result struct {
	Scenario    string  `json:"scenario"`
	System      string  `json:"system"`
	Concurrency int     `json:"concurrency,omitempty"`
	Messages    int     `json:"messages"`
	Seconds     float64 `json:"seconds"`
	MsgsPerSec  float64 `json:"msgs_per_sec"`
	MBPerSec    float64 `json:"mb_per_sec,omitempty"`
	P50Ms       float64 `json:"p50_ms,omitempty"`
	P99Ms       float64 `json:"p99_ms,omitempty"`
	P999Ms      float64 `json:"p999_ms,omitempty"`
	// Ratio compares this line with the scenario's reference (named in
	// Note): ferry / reference throughput, or measured / bound.
	Ratio float64 `json:"ratio,omitempty"`
	Note  string  `json:"note,omitempty"`
	// FsyncAck says whether the system acknowledged a message only after
	// it was fsynced ("yes"), before ("no"), or is empty where the line is
	// no acknowledgement (a disk probe, a consumer, the runtime in memory).
	FsyncAck string `json:"fsync_before_ack,omitempty"`
	// RSSGrowthMB and HeapGrowthMB are the whole process's resident set
	// and Go live heap growth in MiB over what the line measured (set by
	// the serve scenario's backlog lines; the broker runs in this process).
	RSSGrowthMB  float64 `json:"rss_growth_mb,omitempty"`
	HeapGrowthMB float64 `json:"heap_growth_mb,omitempty"`
	// latencies are the samples to plot (set by the latency scenario).
	latencies []time.Duration
}

// Report is a whole run.
type Report struct {
	Started time.Time `json:"started"`
	Go      string    `json:"go"`
	OS      string    `json:"os"`
	CPUs    int       `json:"cpus"`
	Quick   bool      `json:"quick"`
	Results []Result  `json:"results"`
	// Unavailable lists the peers the run could not measure, and why
	// (a service down, a binary or plugin missing): they were skipped,
	// not measured as zero.
	Unavailable []Unavailable `json:"unavailable,omitempty"`
	// Latency holds the latency scenario's samples for the plot.
	Latency []time.Duration `json:"-"`
}

// sizes are the scenario sizes of a run.
type sizes struct {
	publishFor    time.Duration
	concurrencies []int
	diskBytes     int64
	consumeN      int
	lanesN        int
	latencyRate   int
	latencyFor    time.Duration
	routerN       int
	fsyncProbes   int
	// The serve scenario: serveWindow records in flight per producer,
	// ack latency at serveLatencyRate msg/s for serveLatencyFor, and a
	// backlog of serveBacklog records.
	serveWindow      int
	serveLatencyRate int
	serveLatencyFor  time.Duration
	serveBacklog     int
	// riverJobs is how many jobs (and messages) the River work and retry
	// lines run.
	riverJobs int
}

func sizesFor(quick bool) sizes {
	if quick {
		return sizes{publishFor: 300 * time.Millisecond, concurrencies: []int{1, 16, 64}, diskBytes: 16 << 20,
			consumeN: 50_000, lanesN: 5_000, latencyRate: 2_000, latencyFor: time.Second, routerN: 20_000, fsyncProbes: 200,
			serveWindow: 256, serveLatencyRate: 1_000, serveLatencyFor: 300 * time.Millisecond, serveBacklog: 20_000,
			riverJobs: 2_000}
	}
	return sizes{publishFor: 5 * time.Second, concurrencies: []int{1, 16, 64}, diskBytes: 512 << 20,
		consumeN: 1_000_000, lanesN: 200_000, latencyRate: 20_000, latencyFor: 10 * time.Second, routerN: 500_000, fsyncProbes: 3000,
		serveWindow: 4096, serveLatencyRate: 5_000, serveLatencyFor: 5 * time.Second, serveBacklog: 1_000_000,
		riverJobs: 100_000}
}

// Run runs every scenario and returns the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	dir, err := os.MkdirTemp(o.Dir, "ferry-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s := sizesFor(o.Quick)
	r := &Report{Started: time.Now().UTC(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU(), Quick: o.Quick}
	pr := &peerRun{rabbitURL: cmp.Or(o.RabbitMQURL, DefaultRabbitMQURL), postgresDSN: cmp.Or(o.PostgresDSN, DefaultPostgresDSN)}
	steps := []struct {
		name string
		run  func(context.Context, string, sizes) ([]Result, error)
	}{
		{"publish", publishScenario},
		{"publish-pipelined", publishAsyncScenario},
		{"append-vs-disk", diskScenario},
		{"consume", consumeScenario},
		{"latency", latencyScenario},
		{"router", routerScenario},
		{"serve", serveScenario},
		{"redis", pr.redisScenario},
		{"rabbitmq", pr.rabbitQuorumScenario},
		{"rabbitmq-stream", pr.rabbitStreamScenario},
		{"river", pr.riverScenario},
	}
	var only []string
	for _, name := range o.Only {
		if name == "peers" {
			only = append(only, peerScenarios...)
			continue
		}
		if !slices.Contains(Scenarios, name) {
			return r, fmt.Errorf("bench: unknown scenario %q (known: %v, peers)", name, Scenarios)
		}
		only = append(only, name)
	}
	for _, st := range steps {
		if len(only) > 0 && !slices.Contains(only, st.name) {
			continue
		}
		if o.Progress != nil {
			o.Progress(st.name)
		}
		settle()
		res, err := st.run(ctx, dir, s)
		r.Results = append(r.Results, res...)
		var ue *unavailableError
		if errors.As(err, &ue) {
			u := Unavailable{Scenario: st.name, System: ue.system, Reason: ue.Error()}
			slog.Warn("bench: peer unavailable, skipped", "scenario", u.Scenario, "system", u.System, "reason", u.Reason)
			r.Unavailable = append(r.Unavailable, u)
			continue
		}
		if err != nil {
			return r, fmt.Errorf("bench: %s: %w", st.name, err)
		}
		for _, x := range res {
			if x.latencies != nil {
				r.Latency = x.latencies
			}
		}
	}
	return r, nil
}

// openLog opens a durable log (fsync before ack) in path with topics of
// 8 partitions each.
func openLog(ctx context.Context, path string, topics ...string) (*commitlog.Log, error) {
	l, err := commitlog.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	for _, t := range topics {
		if err := l.CreateTopic(ctx, t, commitlog.TopicConfig{Partitions: 8}); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// settle collects the heap and writes back every dirty page (sync(2)), so
// that what is measured next starts clean: the garbage of what ran before
// (a million-message log in memory) and the writeback of what it wrote
// without fsync (JetStream's default mode leaves hundreds of MB dirty; on
// ext4 an fsync may have to wait for that writeback) are not its cost.
// Every scenario starts settled, and so does each system within one.
func settle() {
	debug.FreeOSMemory()
	syscall.Sync()
}

// percentiles fills p50/p99/p99.9 (milliseconds) from samples.
func (x *Result) percentiles(samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	at := func(q float64) float64 {
		i := int(q * float64(len(samples)-1))
		return float64(samples[i]) / 1e6
	}
	x.P50Ms, x.P99Ms, x.P999Ms = at(0.50), at(0.99), at(0.999)
}

func rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
