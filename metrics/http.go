package metrics

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HealthCheck is one named check of /healthz.
type HealthCheck struct {
	Name  string
	Check func() error
}

// Check names a health check: commitlog.Log.Healthy, consumer.Consumer.Healthy,
// or any func() error.
func Check(name string, fn func() error) HealthCheck { return HealthCheck{Name: name, Check: fn} }

// Handler serves /metrics from g and /healthz from checks: 200 with every
// check "ok", or 503 naming what failed, as JSON.
func Handler(g prometheus.Gatherer, checks ...HealthCheck) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		status := map[string]string{}
		code := http.StatusOK
		for _, c := range checks {
			if err := c.Check(); err != nil {
				status[c.Name] = err.Error()
				code = http.StatusServiceUnavailable
			} else {
				status[c.Name] = "ok"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(status)
	})
	return mux
}
