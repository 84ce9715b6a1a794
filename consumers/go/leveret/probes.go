package leveret

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Probes serves GET /livez and /readyz (200, or 503 with the reason, as JSON)
// and /metrics (the Prometheus text format) for one worker.
type Probes struct {
	Health  *Health
	Metrics *Metrics
	Now     func() time.Time // the clock Health is fed with
}

// ServeHTTP answers one probe.
func (p Probes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		plain(w, http.StatusMethodNotAllowed, "only GET and HEAD\n")
		return
	}
	now := p.Now()
	switch r.URL.Path {
	case "/livez", "/healthz":
		verdict(w, p.Health.Liveness(now))
	case "/readyz":
		ready := p.Health.Readiness(now)
		p.Metrics.SetReady(ready.OK)
		verdict(w, ready)
	case "/metrics":
		p.Metrics.SetReady(p.Health.Readiness(now).OK)
		w.Header().Set("Content-Type", MetricsContentType)
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte(p.Metrics.Render()))
	default:
		plain(w, http.StatusNotFound, "not found: try /livez, /readyz or /metrics\n")
	}
}

func verdict(w http.ResponseWriter, v Verdict) {
	status, word := http.StatusOK, "ok"
	if !v.OK {
		status, word = http.StatusServiceUnavailable, "failing"
	}
	body, _ := json.Marshal(struct {
		Status string `json:"status"`
		Reason string `json:"reason"`
	}{word, v.Reason})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

func plain(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(text))
}

// ListenProbes listens on host:port and serves p on it until the listener is
// closed. It returns the listener (its Addr has the port when port is 0).
func ListenProbes(host string, port int, p Probes) (net.Listener, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot serve probes on %s: %w", addr, err)
	}
	server := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second}
	server.SetKeepAlivesEnabled(false)
	go func() { _ = server.Serve(ln) }()
	return ln, nil
}

// CheckURL GETs url and fails unless it answers 200: the image's health check
// (leveret-worker -health-url http://127.0.0.1:9100/livez), which needs no
// shell or curl.
func CheckURL(url string, timeout time.Duration) error {
	client := http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}
