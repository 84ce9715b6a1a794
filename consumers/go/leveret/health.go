package leveret

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Defaults of the health rules, the same as leveret/health.py.
const (
	// DefaultStallAfter is how long messages may wait with nothing settled
	// before the worker counts as stalled.
	DefaultStallAfter = 300 * time.Second
	// DefaultLiveGrace is how long the worker may stay unready before it is
	// no longer live: a reconnect gets that long to succeed.
	DefaultLiveGrace = 60 * time.Second
)

// Verdict is one probe's answer: OK, or the reason it is not.
type Verdict struct {
	OK     bool
	Reason string
}

// Health is what a worker knows of its own health, the pure judgement behind
// its probes. The worker tells it what it sees (connection up or down, the
// broker's count of consumers and of messages waiting, each settled delivery,
// draining) and the probes ask. Every call takes now, so the rules are tested
// with a clock of the test's own. Safe for concurrent use.
//
// Ready: connected, a consumer registered on each queue, and not stalled
// (messages waiting for StallAfter with no delivery settled). Live: ready, or
// unready for at most Grace. A worker that is draining is unready but live.
type Health struct {
	mu         sync.Mutex
	queues     []string
	stallAfter time.Duration
	grace      time.Duration
	connected  bool
	stopping   bool
	consumers  map[string]int
	waiting    map[string]int
	// The progress clock runs only while there is work: it restarts when a
	// delivery settles, and when work is seen after the queues were seen empty.
	progressAt   time.Time
	unreadySince time.Time // zero while ready
}

// NewHealth returns the health of a worker of queues, created at now.
func NewHealth(queues []string, stallAfter, grace time.Duration, now time.Time) *Health {
	return &Health{
		queues:       append([]string(nil), queues...),
		stallAfter:   stallAfter,
		grace:        grace,
		consumers:    map[string]int{},
		waiting:      map[string]int{},
		progressAt:   now,
		unreadySince: now,
	}
}

// ConnectionUp: the worker connected; its consumers are not counted yet.
func (h *Health) ConnectionUp(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.connected = true
	h.consumers = map[string]int{}
	h.progressAt = now
	h.update(now, h.readiness(now))
}

// ConnectionDown: the connection, or a channel the worker needs, was lost.
func (h *Health) ConnectionDown(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.connected = false
	h.consumers = map[string]int{}
	h.update(now, h.readiness(now))
}

// Draining: the worker is shutting down and takes no new work.
func (h *Health) Draining(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopping = true
	h.update(now, h.readiness(now))
}

// Checked records the broker's figures for the worker's queues (a passive declare).
func (h *Health) Checked(consumers, waiting map[string]int, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hadWork := h.hasWork()
	h.consumers = copyCounts(consumers)
	h.waiting = copyCounts(waiting)
	if !hadWork {
		h.progressAt = now
	}
	h.update(now, h.readiness(now))
}

// Settled: a delivery was settled (acked, retried or dead-lettered).
func (h *Health) Settled(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.progressAt = now
	h.update(now, h.readiness(now))
}

// Readiness tells whether the worker can take work now.
func (h *Health) Readiness(now time.Time) Verdict {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.readiness(now)
}

// Liveness tells whether the worker is alive: ready, or unready for at most the grace.
func (h *Health) Liveness(now time.Time) Verdict {
	h.mu.Lock()
	defer h.mu.Unlock()
	ready := h.readiness(now)
	h.update(now, ready)
	if ready.OK || h.stopping || h.unreadySince.IsZero() {
		return Verdict{OK: true}
	}
	since := now.Sub(h.unreadySince)
	if since <= h.grace {
		return Verdict{OK: true}
	}
	return Verdict{Reason: fmt.Sprintf("%s for %.0fs (grace %.0fs)", ready.Reason, since.Seconds(), h.grace.Seconds())}
}

func (h *Health) readiness(now time.Time) Verdict {
	if h.stopping {
		return Verdict{Reason: "the worker is shutting down"}
	}
	if !h.connected {
		return Verdict{Reason: "not connected to the broker"}
	}
	var missing []string
	for _, q := range h.queues {
		if h.consumers[q] < 1 {
			missing = append(missing, q)
		}
	}
	if len(missing) > 0 {
		return Verdict{Reason: "no consumer registered on " + strings.Join(missing, ", ")}
	}
	idle := now.Sub(h.progressAt)
	if h.hasWork() && idle > h.stallAfter {
		total := 0
		for _, n := range h.waiting {
			total += n
		}
		return Verdict{Reason: fmt.Sprintf("stalled: %d message(s) waiting and none settled for %.0fs (limit %.0fs)",
			total, idle.Seconds(), h.stallAfter.Seconds())}
	}
	return Verdict{OK: true}
}

func (h *Health) hasWork() bool {
	for _, n := range h.waiting {
		if n > 0 {
			return true
		}
	}
	return false
}

func (h *Health) update(now time.Time, ready Verdict) {
	switch {
	case ready.OK:
		h.unreadySince = time.Time{}
	case h.unreadySince.IsZero():
		h.unreadySince = now
	}
}

func copyCounts(counts map[string]int) map[string]int {
	out := make(map[string]int, len(counts))
	for k, v := range counts {
		out[k] = v
	}
	return out
}
