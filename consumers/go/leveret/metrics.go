package leveret

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DurationBuckets are the handler duration histogram's bounds in seconds: from
// a millisecond to the five-minute export, as in leveret/metrics.py.
var DurationBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

// MetricsContentType is the Content-Type of the Prometheus text format.
const MetricsContentType = "text/plain; version=0.0.4; charset=utf-8"

// Metrics are a worker's Prometheus figures, with the names, labels and
// meaning of leveret/metrics.py, so the alerts in docs/prometheus/alerts.yml
// hold for every language. Rendered by hand in the text format. Safe for
// concurrent use.
type Metrics struct {
	mu         sync.Mutex
	messages   map[[3]string]float64 // queue, type, outcome
	durations  map[[2]string]*histogram
	inFlight   map[string]float64
	waiting    map[string]float64
	consumers  map[string]float64
	connected  bool
	ready      bool
	reconnects float64
}

type histogram struct {
	buckets []float64
	sum     float64
	count   float64
}

// NewMetrics returns a worker's metrics, all at zero.
func NewMetrics() *Metrics {
	return &Metrics{
		messages:  map[[3]string]float64{},
		durations: map[[2]string]*histogram{},
		inFlight:  map[string]float64{},
		waiting:   map[string]float64{},
		consumers: map[string]float64{},
	}
}

// Received counts a delivery in flight.
func (m *Metrics) Received(queue string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inFlight[queue]++
}

// Settled counts one settled delivery by outcome and times it; msgType ""
// (unreadable) counts as "unknown".
func (m *Metrics) Settled(queue, msgType, outcome string, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if msgType == "" {
		msgType = "unknown"
	}
	m.messages[[3]string{queue, msgType, outcome}]++
	key := [2]string{queue, msgType}
	h := m.durations[key]
	if h == nil {
		h = &histogram{buckets: make([]float64, len(DurationBuckets))}
		m.durations[key] = h
	}
	seconds := took.Seconds()
	for i, bound := range DurationBuckets {
		if seconds <= bound {
			h.buckets[i]++
		}
	}
	h.sum += seconds
	h.count++
	m.inFlight[queue] = math.Max(0, m.inFlight[queue]-1)
}

// Checked records the broker's figures for a queue.
func (m *Metrics) Checked(queue string, consumers, waiting int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.consumers[queue] = float64(consumers)
	m.waiting[queue] = float64(waiting)
}

// SetConnected sets leveret_worker_connected; a connection made again after
// one was lost also counts a reconnect.
func (m *Metrics) SetConnected(up, reconnect bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.connected = up
	if up && reconnect {
		m.reconnects++
	}
}

// SetReady sets leveret_worker_ready.
func (m *Metrics) SetReady(ready bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ready = ready
}

// Render writes every metric in the Prometheus text exposition format.
func (m *Metrics) Render() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	family := func(name, help, kind string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
	}
	sample := func(name string, value float64, labels ...string) {
		b.WriteString(name)
		if len(labels) > 0 {
			b.WriteByte('{')
			for i := 0; i < len(labels); i += 2 {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "%s=\"%s\"", labels[i], escapeLabel(labels[i+1]))
			}
			b.WriteByte('}')
		}
		b.WriteByte(' ')
		b.WriteString(formatValue(value))
		b.WriteByte('\n')
	}

	family("leveret_messages_total", "Deliveries settled, by queue, message type and outcome.", "counter")
	messageKeys := make([][3]string, 0, len(m.messages))
	for k := range m.messages {
		messageKeys = append(messageKeys, k)
	}
	sort.Slice(messageKeys, func(i, j int) bool {
		return strings.Join(messageKeys[i][:], "\x00") < strings.Join(messageKeys[j][:], "\x00")
	})
	for _, k := range messageKeys {
		sample("leveret_messages_total", m.messages[k], "queue", k[0], "type", k[1], "outcome", k[2])
	}

	family("leveret_handler_duration_seconds", "Time from delivery to settlement, handler included.", "histogram")
	durationKeys := make([][2]string, 0, len(m.durations))
	for k := range m.durations {
		durationKeys = append(durationKeys, k)
	}
	sort.Slice(durationKeys, func(i, j int) bool {
		return durationKeys[i][0]+"\x00"+durationKeys[i][1] < durationKeys[j][0]+"\x00"+durationKeys[j][1]
	})
	for _, k := range durationKeys {
		h := m.durations[k]
		for i, bound := range DurationBuckets {
			sample("leveret_handler_duration_seconds_bucket", h.buckets[i], "queue", k[0], "type", k[1], "le", formatValue(bound))
		}
		sample("leveret_handler_duration_seconds_bucket", h.count, "queue", k[0], "type", k[1], "le", "+Inf")
		sample("leveret_handler_duration_seconds_sum", h.sum, "queue", k[0], "type", k[1])
		sample("leveret_handler_duration_seconds_count", h.count, "queue", k[0], "type", k[1])
	}

	family("leveret_messages_in_flight", "Deliveries received and not yet settled.", "gauge")
	for _, q := range sortedKeys(m.inFlight) {
		sample("leveret_messages_in_flight", m.inFlight[q], "queue", q)
	}
	family("leveret_reconnects_total", "Connections to the broker made again after one was lost.", "counter")
	sample("leveret_reconnects_total", m.reconnects)
	family("leveret_worker_connected", "1 while connected to the broker.", "gauge")
	sample("leveret_worker_connected", boolValue(m.connected))
	family("leveret_worker_ready", "1 while the worker's readiness probe passes.", "gauge")
	sample("leveret_worker_ready", boolValue(m.ready))
	family("leveret_queue_messages", "Messages ready in a queue, as the broker last reported them.", "gauge")
	for _, q := range sortedKeys(m.waiting) {
		sample("leveret_queue_messages", m.waiting[q], "queue", q, "role", "work")
	}
	family("leveret_queue_consumers", "Consumers of a queue, as the broker last reported them.", "gauge")
	for _, q := range sortedKeys(m.consumers) {
		sample("leveret_queue_consumers", m.consumers[q], "queue", q, "role", "work")
	}
	return b.String()
}

func escapeLabel(value string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(value)
}

// formatValue writes integers as 1.0, the way the Python client does.
func formatValue(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
