package leveret

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

// at is the test's clock: seconds after an arbitrary start.
func at(s float64) time.Time {
	return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(s * float64(time.Second)))
}

func counts(q string, n int) map[string]int { return map[string]int{q: n} }

func connectedHealth(stallAfter, grace time.Duration) *Health {
	h := NewHealth([]string{"q"}, stallAfter, grace, at(0))
	h.ConnectionUp(at(0))
	h.Checked(counts("q", 1), counts("q", 0), at(0))
	return h
}

func TestHealthUnreadyUntilConnectedAndConsuming(t *testing.T) {
	h := NewHealth([]string{"q"}, DefaultStallAfter, DefaultLiveGrace, at(0))
	if got := h.Readiness(at(0)).Reason; got != "not connected to the broker" {
		t.Errorf("before connecting: %q", got)
	}
	h.ConnectionUp(at(1))
	if got := h.Readiness(at(1)).Reason; got != "no consumer registered on q" {
		t.Errorf("before the check: %q", got)
	}
	h.Checked(counts("q", 1), counts("q", 0), at(1))
	if v := h.Readiness(at(1)); !v.OK || v.Reason != "" {
		t.Errorf("consuming: %+v", v)
	}
}

func TestHealthIdleOnAnEmptyQueueNeverStalls(t *testing.T) {
	h := connectedHealth(10*time.Second, DefaultLiveGrace)
	for s := 0.0; s < 1000; s += 5 {
		h.Checked(counts("q", 1), counts("q", 0), at(s))
	}
	if !h.Readiness(at(1000)).OK || !h.Liveness(at(1000)).OK {
		t.Error("an idle worker counted as stalled")
	}
}

func TestHealthStalledWhenMessagesWaitAndNothingSettles(t *testing.T) {
	h := connectedHealth(10*time.Second, DefaultLiveGrace)
	// The clock starts when work appears, not at the last settle.
	h.Checked(counts("q", 1), counts("q", 4), at(100))
	if !h.Readiness(at(105)).OK {
		t.Error("stalled before stall_after")
	}
	h.Checked(counts("q", 1), counts("q", 4), at(111))
	v := h.Readiness(at(111))
	if v.OK || !strings.HasPrefix(v.Reason, "stalled: 4 message(s) waiting and none settled for 11s (limit 10s)") {
		t.Errorf("after stall_after: %+v", v)
	}
	h.Settled(at(112))
	if !h.Readiness(at(112)).OK {
		t.Error("a settled delivery did not clear the stall")
	}
}

func TestHealthSteadyProgressWithABacklog(t *testing.T) {
	h := connectedHealth(10*time.Second, DefaultLiveGrace)
	for s := 100.0; s < 200; s++ {
		h.Checked(counts("q", 1), counts("q", 500), at(s))
		h.Settled(at(s))
	}
	if !h.Readiness(at(200)).OK {
		t.Error("a worker making progress counted as stalled")
	}
}

func TestHealthLivenessFailsOnlyAfterTheGrace(t *testing.T) {
	h := connectedHealth(DefaultStallAfter, 30*time.Second)
	h.ConnectionDown(at(50))
	if h.Readiness(at(50)).OK {
		t.Error("ready while disconnected")
	}
	if !h.Liveness(at(79)).OK {
		t.Error("not live within the grace")
	}
	v := h.Liveness(at(81))
	if v.OK || v.Reason != "not connected to the broker for 31s (grace 30s)" {
		t.Errorf("after the grace: %+v", v)
	}
	h.ConnectionUp(at(82))
	h.Checked(counts("q", 1), counts("q", 0), at(82))
	if !h.Liveness(at(82)).OK {
		t.Error("not live again after a reconnect")
	}
}

func TestHealthDrainingIsUnreadyButLive(t *testing.T) {
	h := connectedHealth(DefaultStallAfter, DefaultLiveGrace)
	h.Draining(at(10))
	if got := h.Readiness(at(10)).Reason; got != "the worker is shutting down" {
		t.Errorf("draining: %q", got)
	}
	if !h.Liveness(at(1000)).OK {
		t.Error("a draining worker counted as dead")
	}
}

func get(t *testing.T, p Probes, method, path string) (int, string, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Body.String(), rec.Header().Get("Content-Type")
}

func TestProbesAnswerWithTheVerdict(t *testing.T) {
	now := at(0)
	h := NewHealth([]string{"q"}, DefaultStallAfter, DefaultLiveGrace, now)
	p := Probes{Health: h, Metrics: NewMetrics(), Now: func() time.Time { return now }}
	code, body, kind := get(t, p, http.MethodGet, "/readyz")
	var answer map[string]string
	if err := json.Unmarshal([]byte(body), &answer); err != nil {
		t.Fatal(err)
	}
	if code != 503 || kind != "application/json" || answer["status"] != "failing" ||
		answer["reason"] != "not connected to the broker" {
		t.Errorf("unready: %d %s %q", code, kind, body)
	}
	if code, _, _ := get(t, p, http.MethodGet, "/livez"); code != 200 {
		t.Errorf("/livez within the grace: %d", code)
	}
	if code, _, _ := get(t, p, http.MethodPost, "/livez"); code != 405 {
		t.Errorf("POST: %d", code)
	}
	if code, _, _ := get(t, p, http.MethodGet, "/nope"); code != 404 {
		t.Errorf("unknown path: %d", code)
	}
	h.ConnectionUp(now)
	h.Checked(counts("q", 1), counts("q", 0), now)
	if code, body, _ := get(t, p, http.MethodGet, "/readyz"); code != 200 || body != `{"status":"ok","reason":""}`+"\n" {
		t.Errorf("ready: %d %q", code, body)
	}
	if _, text, _ := get(t, p, http.MethodGet, "/metrics"); !strings.Contains(text, "\nleveret_worker_ready 1.0\n") {
		t.Errorf("/metrics does not show the worker ready:\n%s", text)
	}
}

func TestMetricsCountOutcomesAndTimeHandlers(t *testing.T) {
	m := NewMetrics()
	m.Received("q")
	m.Received("q")
	m.Settled("q", "demo.export", "processed", 3*time.Millisecond)
	m.Settled("q", "", "dead_lettered", 200*time.Millisecond)
	m.Checked("q", 2, 7)
	m.SetConnected(true, true)
	text := m.Render()
	for _, line := range []string{
		`leveret_messages_total{queue="q",type="demo.export",outcome="processed"} 1.0`,
		`leveret_messages_total{queue="q",type="unknown",outcome="dead_lettered"} 1.0`,
		`leveret_handler_duration_seconds_bucket{queue="q",type="demo.export",le="0.001"} 0.0`,
		`leveret_handler_duration_seconds_bucket{queue="q",type="demo.export",le="0.005"} 1.0`,
		`leveret_handler_duration_seconds_bucket{queue="q",type="demo.export",le="+Inf"} 1.0`,
		`leveret_handler_duration_seconds_count{queue="q",type="demo.export"} 1.0`,
		`leveret_messages_in_flight{queue="q"} 0.0`,
		`leveret_queue_messages{queue="q",role="work"} 7.0`,
		`leveret_queue_consumers{queue="q",role="work"} 2.0`,
		`leveret_worker_connected 1.0`,
		`leveret_reconnects_total 1.0`,
		`# TYPE leveret_reconnects_total counter`,
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + `$`).MatchString(text) {
			t.Errorf("missing %s in:\n%s", line, text)
		}
	}
}

func TestMetricsEscapeLabelValues(t *testing.T) {
	m := NewMetrics()
	m.Settled("a\"b\\c\nd", "t", "processed", time.Second)
	if !strings.Contains(m.Render(), `queue="a\"b\\c\nd"`) {
		t.Errorf("label not escaped:\n%s", m.Render())
	}
}
