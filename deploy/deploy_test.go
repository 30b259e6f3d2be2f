// Package deploy_test checks the operators' files in deploy/ against ferry
// itself: the Grafana dashboard (grafana/ferry.json) and the Prometheus
// alerting rules (prometheus/alerts.yml) may name only metrics, and label
// names, that running ferry processes export.
package deploy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.yaml.in/yaml/v3"

	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/metrics"
	"github.com/ferrymq/ferry/outbox"
)

const (
	dashboardFile = "grafana/ferry.json"
	rulesFile     = "prometheus/alerts.yml"
	rulesTestFile = "prometheus/alerts_test.yml"
	runbooksFile  = "../docs/runbooks.md"
)

// The alerts the runbooks are written against, with their anchors in
// docs/runbooks.md.
var wantAlerts = map[string]string{
	"FerryConsumerLagGrowing": "a-consumer-is-stuck-or-lagging",
	"FerryDLQGrowing":         "a-poison-message",
	"FerryBreakerOpen":        "a-dependency-outage-the-breaker-is-open",
	"FerryFsyncSlow":          "disk-full-enospc",
	"FerryLogFailed":          "disk-full-enospc",
	"FerryConsumerUnhealthy":  "a-consumer-is-stuck-or-lagging",
}

// The metrics the dashboard must show (publish and consume rates, fsync
// latency, lag, retries, dead letters, DLQ entries, parked keys, breaker,
// outbox relay lag, broker requests and errors).
var wantOnDashboard = []string{
	"ferry_log_appends_total", "ferry_log_messages_total", "ferry_consumer_events_total",
	"ferry_log_fsync_duration_seconds_bucket", "ferry_consumer_lag_messages",
	"ferry_consumer_retries_total", "ferry_consumer_dead_letters_total", "ferry_dlq_entries",
	"ferry_consumer_parked_keys", "ferry_consumer_parked_messages", "ferry_consumer_breaker_state",
	"ferry_outbox_relay_lag_seconds", "ferry_broker_requests_total", "ferry_broker_request_errors_total",
}

// expr is one PromQL expression of the dashboard or the rules, with where
// it is and, for a dashboard target, its legend.
type expr struct {
	where, promql, legend string
}

// rules is the part of a Prometheus rule file the tests read.
type rules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) rules {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var r rules
	if err := yaml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return r
}

// dashboard is the part of a Grafana dashboard's JSON model the tests read.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Datasource  *datasource `json:"datasource"`
	Panels      []panel     `json:"panels"` // a collapsed row's
	Targets     []struct {
		RefID        string      `json:"refId"`
		Expr         string      `json:"expr"`
		LegendFormat string      `json:"legendFormat"`
		Datasource   *datasource `json:"datasource"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Mappings []struct {
				Type    string `json:"type"`
				Options map[string]struct {
					Text string `json:"text"`
				} `json:"options"`
			} `json:"mappings"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

func loadDashboard(t *testing.T) (dashboard, []panel) {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return d, all
}

// exprs returns every PromQL expression of the dashboard (targets and the
// group variable's query) and of the rules.
func exprs(t *testing.T) []expr {
	t.Helper()
	var out []expr
	d, panels := loadDashboard(t)
	for _, p := range panels {
		for _, tg := range p.Targets {
			out = append(out, expr{fmt.Sprintf("%s: panel %q target %s", dashboardFile, p.Title, tg.RefID), tg.Expr, tg.LegendFormat})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q := v.Definition
		if m := regexp.MustCompile(`^label_values\((.*),\s*\w+\)$`).FindStringSubmatch(q); m != nil {
			q = m[1] // the series selector whose label values it lists
		}
		out = append(out, expr{fmt.Sprintf("%s: variable %s", dashboardFile, v.Name), q, ""})
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			out = append(out, expr{fmt.Sprintf("%s: %s", rulesFile, r.Alert+r.Record), r.Expr, ""})
		}
	}
	return out
}

// prose returns the text around the expressions (descriptions, summaries),
// which may name metrics too.
func prose(t *testing.T) []expr {
	t.Helper()
	var out []expr
	_, panels := loadDashboard(t)
	for _, p := range panels {
		out = append(out, expr{fmt.Sprintf("%s: description of panel %q", dashboardFile, p.Title), p.Description, ""})
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			for k, v := range r.Annotations {
				out = append(out, expr{fmt.Sprintf("%s: %s annotation %s", rulesFile, r.Alert, k), v, ""})
			}
		}
	}
	return out
}

var (
	identRE  = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	selRE    = regexp.MustCompile(`(ferry_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	matchRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	byRE     = regexp.MustCompile(`\b(?:by|without|on|ignoring)\s*\(([^)]*)\)`)
	legendRE = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
)

// metricNames returns the tokens of s that are ferry metric names.
func metricNames(s string) []string {
	var out []string
	for _, tok := range identRE.FindAllString(s, -1) {
		tok = strings.TrimRight(tok, ":") // prose: "ferry_log_healthy: ..."
		if strings.HasPrefix(tok, "ferry_") && !slices.Contains(out, tok) {
			out = append(out, tok)
		}
	}
	return out
}

// exposition is what scrapes of running ferry processes exported: the
// name of every series (a histogram's _bucket, _sum and _count) with the
// label names it carries, and the name of every family.
type exposition struct {
	series   map[string]map[string]bool
	families map[string]bool
}

func (e *exposition) add(fams map[string]*dto.MetricFamily) {
	for name, f := range fams {
		e.families[name] = true
		names := []string{name}
		bucket := ""
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names = []string{name + "_sum", name + "_count"}
			bucket = name + "_bucket"
			names = append(names, bucket)
		case dto.MetricType_SUMMARY:
			names = []string{name, name + "_sum", name + "_count"}
		}
		for _, n := range names {
			if e.series[n] == nil {
				e.series[n] = map[string]bool{}
			}
			for _, m := range f.Metric {
				for _, l := range m.Label {
					e.series[n][l.GetName()] = true
				}
			}
			if n == bucket {
				e.series[n]["le"] = true
			}
			if f.GetType() == dto.MetricType_SUMMARY && n == name {
				e.series[n]["quantile"] = true
			}
		}
	}
}

// targetLabels are the labels Prometheus adds to every series it scrapes.
var targetLabels = map[string]bool{"job": true, "instance": true}

// check reports every metric an expression names that e lacks, and every
// label name it matches on, aggregates by or prints in a legend that none
// of its metrics carries.
func (e *exposition) check(t *testing.T, x expr) {
	t.Helper()
	names := metricNames(x.promql)
	labels := map[string]bool{}
	for _, n := range names {
		ls, ok := e.series[n]
		if !ok {
			hint := ""
			if e.families[n] {
				hint = " (a histogram: name its _bucket, _sum or _count series)"
			}
			t.Errorf("%s: metric %s is not exported by a running ferry%s\n  expr: %s", x.where, n, hint, x.promql)
			continue
		}
		for l := range ls {
			labels[l] = true
		}
	}
	for _, m := range selRE.FindAllStringSubmatch(x.promql, -1) {
		ls, ok := e.series[m[1]]
		if !ok {
			continue
		}
		for _, lm := range matchRE.FindAllStringSubmatch(m[2], -1) {
			if !ls[lm[1]] && !targetLabels[lm[1]] {
				t.Errorf("%s: %s has no label %q\n  expr: %s", x.where, m[1], lm[1], x.promql)
			}
		}
	}
	check := func(what string, l string) {
		if l != "" && !labels[l] && !targetLabels[l] {
			t.Errorf("%s: %s %q: none of the expression's metrics %v has that label\n  expr: %s", x.where, what, l, names, x.promql)
		}
	}
	for _, m := range byRE.FindAllStringSubmatch(x.promql, -1) {
		for _, l := range strings.Split(m[1], ",") {
			check("grouping label", strings.TrimSpace(l))
		}
	}
	for _, m := range legendRE.FindAllStringSubmatch(x.legend, -1) {
		check("legend label", m[1])
	}
}

// TestDashboardAndRulesNameOnlyExportedMetrics runs the processes that
// export ferry's metrics in production and scrapes them: ferry serve
// --metrics (the broker and its log) after Kafka clients produced and were
// refused, and the billing example service --metrics (a consumer, its log
// and its DLQ) after it handled, retried and dead-lettered messages. Every
// metric and label that the dashboard's and the rules' expressions name
// must be in those scrapes.
//
// The outbox relay's metrics are the exception: only a service that relays
// a PostgreSQL outbox exports them (examples/orders, which needs a
// database), so they are checked against metrics.New's registry after the
// relay observer has recorded a batch and a failure.
func TestDashboardAndRulesNameOnlyExportedMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two binaries")
	}
	bins := buildBinaries(t)
	e := &exposition{series: map[string]map[string]bool{}, families: map[string]bool{}}
	var wg sync.WaitGroup
	var serveFams, billingFams map[string]*dto.MetricFamily
	wg.Add(2)
	go func() { defer wg.Done(); serveFams = scrapeServe(t, bins) }()
	go func() { defer wg.Done(); billingFams = scrapeBilling(t, bins) }()
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	e.add(serveFams)
	e.add(billingFams)
	relay := relayFamilies(t)
	for name := range relay {
		if !strings.HasPrefix(name, "ferry_outbox_") {
			delete(relay, name) // the rest must come from the processes
		}
	}
	e.add(relay)

	for _, x := range exprs(t) {
		e.check(t, x)
	}
	for _, x := range prose(t) {
		for _, n := range metricNames(x.promql) {
			if e.series[n] == nil && !e.families[n] {
				t.Errorf("%s names %s, which no running ferry exports", x.where, n)
			}
		}
	}
	if t.Failed() {
		var have []string
		for n := range e.series {
			have = append(have, n)
		}
		sort.Strings(have)
		t.Logf("exported: %s", strings.Join(have, " "))
	}
}

// buildBinaries builds ferry and the billing example.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "../cmd/ferry", "../examples/billing")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// start runs a binary, returns the lines of its stdout on a channel, and
// stops it when the test ends (logging its stderr if the test failed).
func start(t *testing.T, bin string, args ...string) <-chan string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stderr := new(syncBuffer)
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	gone := make(chan struct{})
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reads any more
			}
		}
		close(lines)
		cmd.Wait()
		close(gone)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-gone
		if t.Failed() && stderr.String() != "" {
			t.Logf("stderr of %s:\n%s", filepath.Base(bin), stderr.String())
		}
	})
	return lines
}

// syncBuffer is a strings.Builder safe for a process's writes and the test's
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// announced reads lines until each prefix has been seen, and returns the
// rest of each of those lines.
func announced(t *testing.T, what string, lines <-chan string, prefixes ...string) map[string]string {
	t.Helper()
	got := map[string]string{}
	timeout := time.After(60 * time.Second)
	for len(got) < len(prefixes) {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Errorf("%s exited before announcing %q (got %v)", what, prefixes, got)
				return nil
			}
			for _, p := range prefixes {
				if rest, ok := strings.CutPrefix(l, p); ok {
					got[p] = strings.TrimSpace(rest)
				}
			}
		case <-timeout:
			t.Errorf("%s did not announce %q in 60s (got %v)", what, prefixes, got)
			return nil
		}
	}
	return got
}

// scrape GETs url and parses it.
func scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: not the exposition format: %w", url, err)
	}
	return fams, nil
}

// value adds the samples of a family (counters and gauges; a histogram's
// observation counts), or returns -1 without the family.
func value(fams map[string]*dto.MetricFamily, name string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	v := 0.0
	for _, m := range f.Metric {
		v += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
	}
	return v
}

// scrapeUntil scrapes url until done holds of what it exported, for a
// bound far beyond what the work needs (it waits on progress, it does not
// time it), and returns that scrape.
func scrapeUntil(t *testing.T, what, url string, done func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		fams, err := scrape(url)
		if err == nil && done(fams) {
			return fams
		}
		if time.Now().After(deadline) {
			t.Errorf("waited 60s for %s on %s (last error %v)", what, url, err)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scrapeServe runs ferry serve --metrics, has a Kafka client create a
// topic, produce to it and be refused creating it again, and scrapes.
func scrapeServe(t *testing.T, bins string) map[string]*dto.MetricFamily {
	lines := start(t, filepath.Join(bins, "ferry"), "--dir", t.TempDir(), "serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
	a := announced(t, "ferry serve", lines, "serving ", "metrics on ")
	if a == nil {
		return nil
	}
	addr := a["serving "][strings.LastIndex(a["serving "], " ")+1:]
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Error(err)
		return nil
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 2, 1, nil, "orders"); err != nil {
		t.Errorf("create topic through ferry serve: %v", err)
		return nil
	}
	for i := range 3 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Key: []byte("k"), Value: fmt.Appendf(nil, "%d", i)}).FirstErr(); err != nil {
			t.Errorf("produce through ferry serve: %v", err)
			return nil
		}
	}
	if _, err := adm.CreateTopic(ctx, 2, 1, nil, "orders"); err == nil {
		t.Error("ferry serve created a topic that exists")
	}
	return scrapeUntil(t, "the produced messages and the refused request", a["metrics on "], func(f map[string]*dto.MetricFamily) bool {
		return value(f, "ferry_log_messages_total") >= 3 && value(f, "ferry_broker_request_errors_total") >= 1
	})
}

// scrapeBilling runs the billing service with --metrics and has it handle
// an order, retry one ("timeout" fails its first attempt) and dead-letter
// a poison order and the order of its key behind it, then scrapes.
func scrapeBilling(t *testing.T, bins string) map[string]*dto.MetricFamily {
	tmp := t.TempDir()
	lines := start(t, filepath.Join(bins, "billing"), "--dir", filepath.Join(tmp, "data"), "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
		"--handled", filepath.Join(tmp, "handled.txt"), "--fixed", filepath.Join(tmp, "fixed"))
	a := announced(t, "billing", lines, "metrics on ", "admin API on ")
	if a == nil {
		return nil
	}
	client, err := admin.NewClient(a["admin API on "], "", nil)
	if err != nil {
		t.Error(err)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	orders := []admin.Message{{Key: "k", Payload: "poison"}, {Key: "k", Payload: "k/1"}, {Key: "t", Payload: "timeout"}, {Key: "o", Payload: "o/0"}}
	if _, err := client.Produce(ctx, "orders", orders); err != nil {
		t.Errorf("produce to billing: %v", err)
		return nil
	}
	// The DLQ's count is cached between scrapes: scrape once it holds both.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		es, err := client.DeadLetters(ctx, "billing.dlq", admin.Filter{}, admin.Page{})
		if err == nil && len(es) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("billing.dlq did not get its 2 entries in 60s: %v %v", es, err)
			return nil
		}
	}
	return scrapeUntil(t, "the handled, retried and dead-lettered orders", a["metrics on "], func(f map[string]*dto.MetricFamily) bool {
		return value(f, "ferry_consumer_events_total") >= 5 && value(f, "ferry_consumer_retries_total") >= 1 &&
			value(f, "ferry_consumer_dead_letters_total") >= 2 && value(f, "ferry_dlq_entries") >= 2
	})
}

// relayFamilies is what metrics.New's registry exports after an outbox
// relay published a batch and failed one.
func relayFamilies(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	obs := m.RelayObserver("orders")
	obs(outbox.RelayStats{Published: 10, Lag: 2 * time.Second})
	obs(outbox.RelayStats{Err: io.ErrUnexpectedEOF, Failures: 1, Delay: time.Second})
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]*dto.MetricFamily{}
	for _, f := range got {
		fams[f.GetName()] = f
	}
	return fams
}

// The rules are the six alerts the runbooks are written against, each
// with a for, a severity, a summary, a description and a runbook URL in
// docs/runbooks.md; if that file exists, each anchor is one of its
// headings.
func TestRulesAreTheRunbooksAlerts(t *testing.T) {
	r := loadRules(t)
	var anchors map[string]bool
	if raw, err := os.ReadFile(runbooksFile); err == nil {
		anchors = headingAnchors(string(raw))
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == "" {
				continue
			}
			name := rule.Alert
			anchor, ok := wantAlerts[name]
			if !ok {
				t.Errorf("alert %s: not one of the alerts the runbooks are written against %v", name, keys(wantAlerts))
				continue
			}
			if seen[name] {
				t.Errorf("alert %s: defined twice", name)
			}
			seen[name] = true
			if d, err := model.ParseDuration(rule.For); err != nil || d <= 0 {
				t.Errorf("alert %s: for %q: want a positive duration", name, rule.For)
			}
			if s := rule.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q: want warning or critical", name, s)
			}
			for _, k := range []string{"summary", "description"} {
				if strings.TrimSpace(rule.Annotations[k]) == "" {
					t.Errorf("alert %s: no %s", name, k)
				}
			}
			if got, want := rule.Annotations["runbook_url"], "docs/runbooks.md#"+anchor; got != want {
				t.Errorf("alert %s: runbook_url %q, want %q", name, got, want)
			}
			if anchors != nil && !anchors[anchor] {
				t.Errorf("alert %s: %s has no heading with anchor #%s", name, runbooksFile, anchor)
			}
		}
	}
	for name := range wantAlerts {
		if !seen[name] {
			t.Errorf("alert %s: missing", name)
		}
	}
}

// headingAnchors returns the anchors GitHub gives a Markdown file's
// headings: lower case, punctuation dropped, spaces to hyphens.
func headingAnchors(md string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(md, "\n") {
		title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if !ok || !strings.HasPrefix(line, "#") {
			continue
		}
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(title)) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				b.WriteRune(r)
			}
		}
		out[b.String()] = true
	}
	return out
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// The dashboard takes its Prometheus from a datasource variable and its
// groups from a group variable over the lag gauge, every panel and target
// uses the variable, panel IDs are unique, it shows every metric an
// operator needs, and a breaker state is shown as text.
func TestDashboardModel(t *testing.T) {
	d, panels := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard title %q uid %q: want both", d.Title, d.UID)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		switch v.Name {
		case "datasource":
			var q string
			if v.Type != "datasource" || json.Unmarshal(v.Query, &q) != nil || q != "prometheus" {
				t.Errorf("variable datasource: type %q query %s: want a prometheus datasource variable", v.Type, v.Query)
			}
		case "group":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				json.Unmarshal(v.Query, &q.Query) // the older form: a string
			}
			want := "label_values(ferry_consumer_lag_messages, group)"
			if v.Type != "query" || q.Query != want || v.Definition != want {
				t.Errorf("variable group: type %q query %q definition %q: want a query of %s", v.Type, q.Query, v.Definition, want)
			}
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable group: datasource %+v, want ${datasource}", v.Datasource)
			}
		}
	}
	for _, name := range []string{"datasource", "group"} {
		if _, ok := vars[name]; !ok {
			t.Errorf("no %s variable", name)
		}
	}
	ids := map[int]string{}
	shown := map[string]bool{}
	for _, p := range panels {
		if prev, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no targets", p.Title)
		}
		breaker := false
		for _, tg := range p.Targets {
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %s: datasource %+v, want ${datasource}", p.Title, tg.RefID, tg.Datasource)
			}
			if strings.Contains(tg.Expr, "ferry_consumer_") && !strings.Contains(tg.Expr, `group=~"$group"`) {
				t.Errorf("panel %q target %s: a consumer metric not filtered by $group: %s", p.Title, tg.RefID, tg.Expr)
			}
			for _, n := range metricNames(tg.Expr) {
				shown[n] = true
			}
			breaker = breaker || strings.Contains(tg.Expr, "ferry_consumer_breaker_state")
		}
		if breaker {
			texts := map[string]string{}
			for _, m := range p.FieldConfig.Defaults.Mappings {
				if m.Type == "value" {
					for v, o := range m.Options {
						texts[v] = o.Text
					}
				}
			}
			if want := map[string]string{"0": "closed", "1": "half-open", "2": "open"}; !mapsEqual(texts, want) {
				t.Errorf("panel %q shows the breaker state with value mappings %v, want %v", p.Title, texts, want)
			}
		}
	}
	for _, n := range wantOnDashboard {
		if !shown[n] {
			t.Errorf("no panel shows %s", n)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
