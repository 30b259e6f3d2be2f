package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// promtoolInstall is how CI (.ci/run) installs promtool.
const promtoolInstall = "apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus"

// promtool returns promtool's path; without it the test is skipped, or
// fails under CI, where it must run.
func promtool(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool is not installed (Debian package prometheus): " + promtoolInstall
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

func runPromtool(t *testing.T, bin string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// promtool accepts the rules, and their unit tests pass: each alert fires
// on the synthetic series of its trouble and stays quiet on the others.
func TestPromtoolRules(t *testing.T) {
	bin := promtool(t)
	runPromtool(t, bin, "check", "rules", rulesFile)
	runPromtool(t, bin, "test", "rules", rulesTestFile)
}

// Grafana's variables, as the dashboard's expressions use them, replaced by
// values Prometheus would accept in their place.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "${__rate_interval}", "5m", "$__interval", "1m", "$__range", "1h",
	"${group}", ".*", "$group", ".*")

// Every expression of the dashboard is valid PromQL: promtool checks them
// as the recording rules of a rule file, with Grafana's variables replaced.
func TestPromtoolDashboardExpressions(t *testing.T) {
	bin := promtool(t)
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rs []rule
	for i, x := range exprs(t) {
		if !strings.HasPrefix(x.where, dashboardFile) {
			continue
		}
		q := grafanaVars.Replace(x.promql)
		if v := regexp.MustCompile(`\$\{?\w+`).FindString(q); v != "" {
			t.Errorf("%s: variable %s: not one this test knows how to replace\n  expr: %s", x.where, v, x.promql)
			continue
		}
		rs = append(rs, rule{Record: fmt.Sprintf("dashboard:expr_%d", i), Expr: q})
	}
	file := map[string]any{"groups": []map[string]any{{"name": "dashboard", "rules": rs}}}
	raw, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "check", "rules", path).CombinedOutput()
	if err != nil {
		// Name the panels of the rules promtool refused.
		for i, x := range exprs(t) {
			if strings.Contains(string(out), fmt.Sprintf("dashboard:expr_%d\"", i)) || strings.Contains(string(out), fmt.Sprintf("dashboard:expr_%d ", i)) {
				t.Logf("%s: %s", fmt.Sprintf("dashboard:expr_%d", i), x.where)
			}
		}
		t.Errorf("promtool check rules on the dashboard's expressions: %v\n%s", err, out)
	}
}
