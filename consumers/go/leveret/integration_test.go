package leveret_test

// Integration tests against a real RabbitMQ (3.10 or later) on 127.0.0.1:5672,
// or LEVERET_TEST_URL. Each test declares a topology of its own under a unique
// name, mirroring leveret/topology.py, runs the worker in-process and deletes
// everything afterwards. Without a broker the tests are skipped, unless
// LEVERET_REQUIRE_BROKER is set, when they fail.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"leveret-worker/leveret"
)

const (
	routingKey = "conformance"
	wait       = 20 * time.Second
)

const (
	traceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentID    = "00f067aa0ba902b7"
	traceparent = "00-" + traceID + "-" + parentID + "-01"
)

var (
	schemaDir = filepath.Join("..", "..", "..", "schemas")
	isoUTC    = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$`)
)

// brokerURL is LEVERET_TEST_URL, else the local broker, with the login it implies
// written in (the client's defaults: RabbitMQ's default user), so that the tests
// checking that no output shows the password check a real one.
func brokerURL() string {
	raw := os.Getenv("LEVERET_TEST_URL")
	if raw == "" {
		raw = "amqp://127.0.0.1:5672/"
	}
	u, err := url.Parse(raw)
	if err != nil || u.User != nil {
		return raw
	}
	uri, err := amqp.ParseURI(raw)
	if err != nil {
		return raw
	}
	u.User = url.UserPassword(uri.Username, uri.Password)
	return u.String()
}

// brokerLogin is the user:password part of brokerURL, as no output may show it.
func brokerLogin() string {
	u, _ := url.Parse(brokerURL())
	return u.User.String()
}

// broker is the test's own connection: it declares, publishes and inspects.
type broker struct {
	t    *testing.T
	conn *amqp.Connection
}

func dial(t *testing.T) *broker {
	t.Helper()
	conn, err := amqp.Dial(brokerURL())
	if err != nil {
		if os.Getenv("LEVERET_REQUIRE_BROKER") != "" {
			t.Fatalf("no broker at %s: %v", leveret.Redact(brokerURL()), err)
		}
		t.Skipf("no broker at %s: %v", leveret.Redact(brokerURL()), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &broker{t: t, conn: conn}
}

// channel opens a fresh channel: a failed passive declare closes its channel.
func (b *broker) channel() *amqp.Channel {
	b.t.Helper()
	ch, err := b.conn.Channel()
	if err != nil {
		b.t.Fatal(err)
	}
	return ch
}

func (b *broker) must(err error) {
	b.t.Helper()
	if err != nil {
		b.t.Fatal(err)
	}
}

type topology struct {
	queue       string
	deadLetter  string // Q's x-dead-letter-exchange; Q.dead unless a test needs another
	bindDLQ     bool   // bind Q.dlq to Q.dead
	extraQueues []string
	extraExch   []string
	classic     bool // classic queues rather than quorum ones (a policy can limit them)
}

func uniqueQueue(name string) string {
	return fmt.Sprintf("leveret.gotest.%s.%d.%d", name, os.Getpid(), time.Now().UnixNano())
}

// declare builds what `leveret topology apply` builds for a queue with tiers of
// 200 ms and 400 ms and max_attempts 3, plus a receipts exchange and queue.
func (b *broker) declare(top topology) {
	b.t.Helper()
	q := top.queue
	ch := b.channel()
	defer ch.Close()
	dead, retry, dlq := q+".dead", q+".retry", q+".dlq"
	quorum := func(extra amqp.Table) amqp.Table {
		args := amqp.Table{"x-queue-type": "quorum"}
		if top.classic {
			args = amqp.Table{}
		}
		for k, v := range extra {
			if top.classic && (k == "x-dead-letter-strategy" || k == "x-delivery-limit") {
				continue // quorum queues only
			}
			args[k] = v
		}
		return args
	}
	b.t.Cleanup(func() { b.delete(top) })
	b.must(ch.ExchangeDeclare(q+".ex", "direct", true, false, false, false, nil))
	b.must(ch.ExchangeDeclare(dead, "fanout", true, false, false, false, nil))
	_, err := ch.QueueDeclare(dlq, true, false, false, false, quorum(nil))
	b.must(err)
	if top.bindDLQ {
		b.must(ch.QueueBind(dlq, "", dead, false, nil))
	}
	b.must(ch.ExchangeDeclare(retry, "headers", true, false, false, false, amqp.Table{"alternate-exchange": dead}))
	_, err = ch.QueueDeclare(q, true, false, false, false, quorum(amqp.Table{
		"x-dead-letter-exchange": top.deadLetter,
		"x-dead-letter-strategy": "at-least-once",
		"x-overflow":             "reject-publish",
		"x-delivery-limit":       int32(20),
	}))
	b.must(err)
	b.must(ch.QueueBind(q, routingKey, q+".ex", false, nil))
	for tier, ttl := range map[int]int32{1: 200, 2: 400} {
		name := fmt.Sprintf("%s.%d", retry, tier)
		_, err := ch.QueueDeclare(name, true, false, false, false, quorum(amqp.Table{
			"x-message-ttl":             ttl,
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": q,
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		}))
		b.must(err)
		// max_attempts 3: counts 1 and 2 are bound, count 3 falls through to Q.dead.
		b.must(ch.QueueBind(name, "", retry, false, amqp.Table{
			"x-match": "all", leveret.HeaderRetryCount: int32(tier),
		}))
	}
	receipts := q + ".receipts"
	b.must(ch.ExchangeDeclare(receipts, "fanout", true, false, false, false, nil))
	_, err = ch.QueueDeclare(receipts, true, false, false, false, nil)
	b.must(err)
	b.must(ch.QueueBind(receipts, "", receipts, false, nil))
	for _, name := range top.extraExch {
		b.must(ch.ExchangeDeclare(name, "fanout", true, false, false, false, nil))
	}
	for _, name := range top.extraQueues {
		_, err = ch.QueueDeclare(name, true, false, false, false, nil)
		b.must(err)
		b.must(ch.QueueBind(name, "", name, false, nil))
	}
}

func (b *broker) delete(top topology) {
	q := top.queue
	ch, err := b.conn.Channel()
	if err != nil {
		b.t.Logf("cleanup: %v", err)
		return
	}
	defer ch.Close()
	for _, name := range append([]string{q, q + ".retry.1", q + ".retry.2", q + ".dlq", q + ".receipts"}, top.extraQueues...) {
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			b.t.Logf("cleanup: queue %s: %v", name, err)
		}
	}
	for _, name := range append([]string{q + ".ex", q + ".retry", q + ".dead", q + ".receipts"}, top.extraExch...) {
		if err := ch.ExchangeDelete(name, false, false); err != nil {
			b.t.Logf("cleanup: exchange %s: %v", name, err)
		}
	}
}

func (b *broker) inspect(queue string) amqp.Queue {
	b.t.Helper()
	ch := b.channel()
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	b.must(err)
	return q
}

// publish sends a task as a contract publisher does, with confirms; props may
// change the defaults. It returns the message id.
func (b *broker) publish(queue string, body []byte, props func(*amqp.Publishing)) string {
	b.t.Helper()
	ch := b.channel()
	defer ch.Close()
	b.must(ch.Confirm(false))
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1))
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	msg := amqp.Publishing{
		ContentType:  leveret.ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    leveret.NewMessageID(),
		Type:         leveret.ConformanceType,
		Timestamp:    time.Now(),
		Headers:      amqp.Table{leveret.HeaderVersion: int32(1)},
		Body:         body,
	}
	if props != nil {
		props(&msg)
	}
	b.must(ch.PublishWithContext(context.Background(), queue+".ex", routingKey, true, false, msg))
	select {
	case c := <-confirms:
		if !c.Ack {
			b.t.Fatal("task nacked")
		}
	case <-time.After(wait):
		b.t.Fatal("no confirm for the task")
	}
	select {
	case r := <-returns:
		b.t.Fatalf("task returned: %s", r.ReplyText)
	default:
	}
	return msg.MessageId
}

func (b *broker) task(queue string, fields map[string]interface{}) string {
	b.t.Helper()
	fields["receipt_exchange"] = queue + ".receipts"
	fields["receipt_routing_key"] = ""
	body, err := json.Marshal(fields)
	b.must(err)
	return b.publish(queue, body, nil)
}

type receipt struct {
	MessageID string `json:"message_id"`
	Attempt   int64  `json:"attempt"`
	Consumer  string `json:"consumer"`
}

// get waits for a message in queue that matches, taking (and acking) every
// message it looks at.
func (b *broker) get(queue string, match func(amqp.Delivery) bool, what string) amqp.Delivery {
	b.t.Helper()
	ch := b.channel()
	defer ch.Close()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true)
		b.must(err)
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if match(d) {
			return d
		}
	}
	b.t.Fatalf("timed out waiting for %s in %s", what, queue)
	return amqp.Delivery{}
}

func (b *broker) receipt(queue, taskID string) (receipt, amqp.Delivery) {
	b.t.Helper()
	var r receipt
	d := b.get(queue+".receipts", func(d amqp.Delivery) bool {
		return json.Unmarshal(d.Body, &r) == nil && r.MessageID == taskID
	}, "the receipt of "+taskID)
	return r, d
}

func (b *broker) deadLetter(queue, id string) amqp.Delivery {
	b.t.Helper()
	return b.get(queue, func(d amqp.Delivery) bool { return d.MessageId == id }, "message "+id)
}

// syncBuffer collects the worker's log lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

type running struct {
	logs *syncBuffer
	stop func() error
}

// startWorker runs the worker with the conformance handler (and what register
// adds) on queue and waits until the broker reports its consumer.
func (b *broker) startWorker(queue string, register ...func(*leveret.Worker)) *running {
	b.t.Helper()
	return b.startWorkerEnv(queue, nil, register...)
}

// startWorkerEnv is startWorker with more LEVERET_* settings in env.
func (b *broker) startWorkerEnv(queue string, env map[string]string, register ...func(*leveret.Worker)) *running {
	b.t.Helper()
	cfg, err := leveret.ConfigFromEnv(func(k string) string {
		if v, ok := env[k]; ok {
			return v
		}
		return map[string]string{
			"LEVERET_URL": brokerURL(), "LEVERET_QUEUE": queue, "LEVERET_SCHEMAS": schemaDir,
		}[k]
	})
	b.must(err)
	cfg.Grace = 10 * time.Second
	cfg.CheckInterval = time.Second
	logs := &syncBuffer{}
	w := leveret.New(cfg, leveret.NewLogger(logs))
	w.Handle(leveret.ConformanceType, []int64{1}, leveret.Conformance("go"))
	for _, r := range register {
		r(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() { result <- w.Run(ctx) }()
	var once sync.Once
	var stopErr error
	r := &running{logs: logs, stop: func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-result:
			case <-time.After(wait):
				stopErr = fmt.Errorf("the worker did not stop")
			}
		})
		return stopErr
	}}
	b.t.Cleanup(func() {
		if err := r.stop(); err != nil {
			b.t.Error(err)
		}
		if b.t.Failed() {
			b.t.Logf("worker log:\n%s", logs.String())
		}
	})
	b.eventually(func() bool {
		select {
		case err := <-result:
			b.t.Fatalf("the worker stopped: %v", err)
		default:
		}
		return b.inspect(queue).Consumers > 0
	}, "the worker's consumer")
	return r
}

func (b *broker) eventually(ok func() bool, what string) {
	b.t.Helper()
	deadline := time.Now().Add(wait)
	for !ok() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logLine finds the worker's JSON line of event for a message id.
func logLine(logs *syncBuffer, event, id string) map[string]interface{} {
	for _, line := range strings.Split(logs.String(), "\n") {
		var rec map[string]interface{}
		if json.Unmarshal([]byte(line), &rec) == nil && rec["event"] == event && rec["message_id"] == id {
			return rec
		}
	}
	return nil
}

func integer(t *testing.T, headers amqp.Table, key string) int64 {
	t.Helper()
	n, ok := leveret.Integer(headers[key])
	if !ok {
		t.Fatalf("%s = %#v (%T), not an AMQP integer", key, headers[key], headers[key])
	}
	return n
}

func TestIntegrationConformance(t *testing.T) {
	b := dial(t)
	q := uniqueQueue("conformance")
	b.declare(topology{queue: q, deadLetter: q + ".dead", bindDLQ: true})
	w := b.startWorker(q)
	dlq := q + ".dlq"

	t.Run("valid task processed once, receipt by the contract", func(t *testing.T) {
		id := b.task(q, map[string]interface{}{"note": "valid"})
		r, d := b.receipt(q, id)
		if r.Attempt != 1 || r.Consumer != "go" {
			t.Errorf("receipt %+v", r)
		}
		if d.ContentType != leveret.ContentType || d.DeliveryMode != amqp.Persistent ||
			d.Type != leveret.ReceiptType || d.MessageId == "" || d.MessageId == id ||
			d.CorrelationId != id || d.Timestamp.IsZero() {
			t.Errorf("receipt properties %+v", d)
		}
		if integer(t, d.Headers, leveret.HeaderVersion) != 1 {
			t.Errorf("receipt version %#v", d.Headers[leveret.HeaderVersion])
		}
		// It came without a traceparent: the receipt starts the trace the log line names.
		sent, ok := leveret.ParseTraceparent(d.Headers[leveret.HeaderTraceparent])
		var line map[string]interface{}
		b.eventually(func() bool { line = logLine(w.logs, "message.processed", id); return line != nil }, "the log line")
		if !ok || sent.Flags != "01" || line["trace_id"] != sent.TraceID {
			t.Errorf("receipt traceparent %#v, log line %v", d.Headers[leveret.HeaderTraceparent], line)
		}
	})

	t.Run("a receipt continues the task's trace", func(t *testing.T) {
		body := []byte(fmt.Sprintf(`{"note": "traced", "receipt_exchange": %q, "receipt_routing_key": ""}`, q+".receipts"))
		id := b.publish(q, body, func(p *amqp.Publishing) {
			p.Headers[leveret.HeaderTraceparent] = "00-" + traceID + "-" + parentID + "-00"
			p.Headers[leveret.HeaderTracestate] = "congo=t61rcWkgMzE"
		})
		_, d := b.receipt(q, id)
		sent, ok := leveret.ParseTraceparent(d.Headers[leveret.HeaderTraceparent])
		if !ok || sent.TraceID != traceID || sent.Flags != "00" || sent.ParentID == parentID {
			t.Errorf("receipt traceparent %#v", d.Headers[leveret.HeaderTraceparent])
		}
		if d.Headers[leveret.HeaderTracestate] != "congo=t61rcWkgMzE" {
			t.Errorf("receipt tracestate %#v", d.Headers[leveret.HeaderTracestate])
		}
		var line map[string]interface{}
		b.eventually(func() bool { line = logLine(w.logs, "message.processed", id); return line != nil }, "the log line")
		if line["trace_id"] != traceID {
			t.Errorf("log line %v", line)
		}
	})

	t.Run("failing once: processed on attempt 2", func(t *testing.T) {
		start := time.Now()
		id := b.task(q, map[string]interface{}{"fail_times": 1})
		r, _ := b.receipt(q, id)
		if r.Attempt != 2 {
			t.Errorf("processed on attempt %d", r.Attempt)
		}
		if took := time.Since(start); took < 180*time.Millisecond {
			t.Errorf("it did not wait in the first tier (%s)", took)
		}
	})

	t.Run("failing always: every tier, then the DLQ with count 3", func(t *testing.T) {
		start := time.Now()
		body := []byte(`{"fail_times": 99, "note": "always fails"}`)
		stamp := time.Unix(1700000000, 0)
		id := b.publish(q, body, func(p *amqp.Publishing) {
			p.Timestamp = stamp
			p.CorrelationId = "job-7"
			p.Headers["app-header"] = "kept"
			p.Headers["x-app"] = "dropped"
			p.Headers[leveret.HeaderTraceparent] = traceparent
		})
		d := b.deadLetter(dlq, id)
		if took := time.Since(start); took < 540*time.Millisecond {
			t.Errorf("it did not wait in both tiers (%s)", took)
		}
		h := d.Headers
		if n := integer(t, h, leveret.HeaderRetryCount); n != 3 {
			t.Errorf("retry count %d", n)
		}
		want := map[string]string{
			leveret.HeaderReason:             leveret.ReasonHandlerError,
			leveret.HeaderErrorType:          "ConformanceFailure",
			leveret.HeaderErrorMessage:       "failing on purpose: attempt 3 of 99",
			leveret.HeaderFailedQueue:        q,
			leveret.HeaderOriginalExchange:   q + ".ex",
			leveret.HeaderOriginalRoutingKey: routingKey,
			"app-header":                     "kept",
			leveret.HeaderTraceparent:        traceparent, // every copy keeps it unchanged
		}
		for k, v := range want {
			if h[k] != v {
				t.Errorf("%s = %#v, want %q", k, h[k], v)
			}
		}
		for _, k := range []string{leveret.HeaderFirstFailedAt, leveret.HeaderLastFailedAt} {
			if s, _ := h[k].(string); !isoUTC.MatchString(s) {
				t.Errorf("%s = %#v", k, h[k])
			}
		}
		if h[leveret.HeaderFirstFailedAt].(string) > h[leveret.HeaderLastFailedAt].(string) {
			t.Error("first failure after the last")
		}
		if s, _ := h[leveret.HeaderFailedBy].(string); !strings.HasPrefix(s, q+"@") {
			t.Errorf("failed-by %#v", h[leveret.HeaderFailedBy])
		}
		if _, ok := h[leveret.HeaderErrorTraceback]; !ok {
			t.Error("a transient failure carries leveret-error-traceback")
		}
		// x-delivery-count is the DLQ's own (a quorum queue adds it on delivery).
		for k := range h {
			if strings.HasPrefix(k, "x-") && k != "x-delivery-count" {
				t.Errorf("the copy kept %s", k)
			}
		}
		if !bytes.Equal(d.Body, body) || !d.Timestamp.Equal(stamp) || d.CorrelationId != "job-7" ||
			d.Type != leveret.ConformanceType || d.DeliveryMode != amqp.Persistent {
			t.Errorf("the copy changed: %+v", d)
		}
	})

	permanent := []struct {
		name, reason string
		body         string
		props        func(*amqp.Publishing)
	}{
		{"invalid JSON", leveret.ReasonInvalidJSON, `{not json`, nil},
		{"unknown type", leveret.ReasonUnknownType, `{}`, func(p *amqp.Publishing) { p.Type = "leveret.conformance.unknown" }},
		{"unknown version", leveret.ReasonUnknownVersion, `{}`, func(p *amqp.Publishing) { p.Headers[leveret.HeaderVersion] = int32(99) }},
		{"missing version", leveret.ReasonUnknownVersion, `{}`, func(p *amqp.Publishing) { p.Headers = nil }},
		{"schema violation", leveret.ReasonSchemaViolation, `{"fail_times": "1"}`, nil},
		{"wrong content type", leveret.ReasonInvalidContentType, `{}`, func(p *amqp.Publishing) { p.ContentType = "text/plain" }},
	}
	for _, c := range permanent {
		c := c
		t.Run(c.name+": dead-lettered at once", func(t *testing.T) {
			id := b.publish(q, []byte(c.body), c.props)
			d := b.deadLetter(dlq, id)
			if d.Headers[leveret.HeaderReason] != c.reason {
				t.Errorf("reason %#v, want %q", d.Headers[leveret.HeaderReason], c.reason)
			}
			if n := integer(t, d.Headers, leveret.HeaderRetryCount); n != 1 {
				t.Errorf("retry count %d, want 1 (no retry)", n)
			}
			if _, ok := d.Headers[leveret.HeaderErrorTraceback]; ok {
				t.Error("a permanent failure carries no traceback")
			}
			if string(d.Body) != c.body {
				t.Errorf("body %q", d.Body)
			}
		})
	}

	t.Run("shutdown mid-handler: finished, acked, Run returns nil", func(t *testing.T) {
		id := b.task(q, map[string]interface{}{"sleep_ms": 1000, "note": "stop mid-handler"})
		b.eventually(func() bool { return b.inspect(q).Messages == 0 }, "the worker to take the task")
		time.Sleep(200 * time.Millisecond)
		if err := w.stop(); err != nil {
			t.Fatalf("Run returned %v", err)
		}
		r, _ := b.receipt(q, id)
		if r.Attempt != 1 {
			t.Errorf("attempt %d", r.Attempt)
		}
		state := b.inspect(q)
		if state.Consumers != 0 || state.Messages != 0 {
			t.Errorf("after stop: %d consumers, %d messages", state.Consumers, state.Messages)
		}
		for _, event := range []string{`"event":"worker.draining"`, `"event":"worker.stopped"`} {
			if !strings.Contains(w.logs.String(), event) {
				t.Errorf("no %s in the log", event)
			}
		}
	})

	// One JSON line per outcome, and never the password.
	for _, line := range strings.Split(strings.TrimSpace(w.logs.String()), "\n") {
		var rec map[string]interface{}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("not a JSON line: %q", line)
		}
		if login := brokerLogin(); strings.Contains(line, login) {
			t.Errorf("the log shows the password: %q", line)
		}
	}
}

// A copy that the broker returns (Q.dead has no queue bound) is not confirmed:
// the worker must reject the delivery without requeue, so that Q's own
// dead-letter exchange takes it.
func TestIntegrationUnconfirmedCopyIsRejected(t *testing.T) {
	b := dial(t)
	q := uniqueQueue("unconfirmed")
	rejected := q + ".rejected"
	b.declare(topology{queue: q, deadLetter: rejected, bindDLQ: false,
		extraExch: []string{rejected}, extraQueues: []string{rejected}})
	w := b.startWorker(q)

	id := b.publish(q, []byte(`{not json`), nil)
	d := b.deadLetter(rejected, id)
	if _, ok := d.Headers["x-death"]; !ok {
		t.Error("no x-death: the message did not come through Q's dead-lettering")
	}
	if _, ok := d.Headers[leveret.HeaderReason]; ok {
		t.Error("the rejected original must not carry the copy's headers")
	}
	b.eventually(func() bool {
		return strings.Contains(w.logs.String(), `"event":"message.republish_failed"`)
	}, "the republish failure in the log")
	if !strings.Contains(w.logs.String(), "returned as unroutable") {
		t.Errorf("the failure is not the return:\n%s", w.logs.String())
	}
	if n := b.inspect(q).Messages; n != 0 {
		t.Errorf("%d messages left in Q: the delivery was requeued", n)
	}
}

// A worker whose queue is missing stops with one line naming what is missing.
func TestIntegrationMissingTopology(t *testing.T) {
	dial(t)
	q := uniqueQueue("missing")
	cfg, err := leveret.ConfigFromEnv(func(k string) string {
		return map[string]string{"LEVERET_URL": brokerURL(), "LEVERET_QUEUE": q, "LEVERET_SCHEMAS": schemaDir}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	w := leveret.New(cfg, leveret.NewLogger(&syncBuffer{}))
	w.Handle(leveret.ConformanceType, []int64{1}, leveret.Conformance("go"))
	err = w.Run(context.Background())
	var missing *leveret.TopologyMissingError
	if !errors.As(err, &missing) || len(missing.Missing) != 4 ||
		!strings.Contains(err.Error(), "run `leveret topology apply`") {
		t.Fatalf("Run = %v", err)
	}
}

// After the broker drops the connection the worker reconnects and consumes
// again. Needs rabbitmqctl on this machine to close the connection.
func TestIntegrationReconnect(t *testing.T) {
	b := dial(t)
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil || !strings.Contains(brokerURL(), "127.0.0.1") && !strings.Contains(brokerURL(), "localhost") {
		t.Skip("needs rabbitmqctl for a local broker")
	}
	q := uniqueQueue("reconnect")
	b.declare(topology{queue: q, deadLetter: q + ".dead", bindDLQ: true})
	w := b.startWorker(q)

	out, err := exec.Command(ctl, "-q", "list_connections", "pid", "client_properties").CombinedOutput()
	if err != nil {
		t.Skipf("rabbitmqctl cannot list connections: %v", err)
	}
	var pid string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "leveret-go "+q+"@") {
			pid = strings.Fields(line)[0]
		}
	}
	if pid == "" {
		t.Fatalf("the worker's connection is not listed:\n%s", out)
	}
	if out, err := exec.Command(ctl, "-q", "close_connection", pid, "leveret test: dropped").CombinedOutput(); err != nil {
		t.Fatalf("close_connection: %v\n%s", err, out)
	}
	b.eventually(func() bool {
		return strings.Contains(w.logs.String(), `"event":"worker.resumed"`)
	}, "the worker to resume")
	b.eventually(func() bool { return b.inspect(q).Consumers == 1 }, "one consumer again")
	id := b.task(q, map[string]interface{}{"note": "after reconnect"})
	if r, _ := b.receipt(q, id); r.Attempt != 1 {
		t.Errorf("receipt %+v", r)
	}
	if !strings.Contains(w.logs.String(), `"event":"worker.connection_lost"`) {
		t.Error("the lost connection was not logged")
	}
}

func TestIntegrationJobStatus(t *testing.T) {
	b := dial(t)
	q := uniqueQueue("status")
	b.declare(topology{queue: q, deadLetter: q + ".dead", bindDLQ: true})
	ch := b.channel()
	b.must(ch.ExchangeDeclare(leveret.StatusExchange, "topic", true, false, false, false, nil)) // shared: declared if absent, never deleted
	statusQueue, err := ch.QueueDeclare("", false, true, true, false, nil)
	b.must(err)
	// demo.export is tracked; user 13's export fails once, then gives up.
	b.startWorker(q, func(w *leveret.Worker) {
		w.Handle("demo.export", []int64{1}, func(ctx context.Context, task *leveret.Task) error {
			var req struct {
				UserID int64 `json:"user_id"`
			}
			switch _ = task.Decode(&req); {
			case req.UserID == 13 && task.Attempt == 1:
				return errors.New("disk full")
			case req.UserID == 13:
				return leveret.DeadLetter(errors.New("giving up"))
			}
			task.Progress(ctx, 50, "wrote part 1 of 2")
			task.Progress(ctx, 100, "wrote part 2 of 2")
			task.Result = "exports/" + task.MessageID + ".csv"
			return nil
		}, leveret.Tracked())
	})
	schemas := leveret.NewSchemas(schemaDir)
	atMicros := regexp.MustCompile(`\.\d{6}\+00:00$`)
	// events publishes a task and returns its first n status events, checked, in order.
	events := func(t *testing.T, n int, body string, props func(*amqp.Publishing)) (string, string) {
		id := leveret.NewMessageID()
		b.must(ch.QueueBind(statusQueue.Name, id, leveret.StatusExchange, false, nil))
		b.publish(q, []byte(body), func(p *amqp.Publishing) {
			p.MessageId = id
			p.Headers[leveret.HeaderTraceparent] = traceparent
			props(p)
		})
		var got []string
		last := ""
		parents := map[string]bool{parentID: true}
		for len(got) < n {
			d := b.get(statusQueue.Name, func(amqp.Delivery) bool { return true }, "a status event of "+id)
			// Each event continues the task's trace, with a parent-id of its own.
			if sent, ok := leveret.ParseTraceparent(d.Headers[leveret.HeaderTraceparent]); !ok ||
				sent.TraceID != traceID || sent.Flags != "01" || parents[sent.ParentID] {
				t.Errorf("status event traceparent %#v", d.Headers[leveret.HeaderTraceparent])
			} else {
				parents[sent.ParentID] = true
			}
			var ev leveret.JobStatus
			b.must(json.Unmarshal(d.Body, &ev))
			if err := schemas.Validate(leveret.StatusType, 1, d.Body); err != nil || d.Type != leveret.StatusType ||
				d.DeliveryMode != amqp.Persistent || d.RoutingKey != id || ev.JobID != id ||
				!atMicros.MatchString(ev.At) || ev.At < last {
				t.Errorf("event %s (%v): %+v", d.Body, err, d)
			}
			last = ev.At
			percent := ""
			if ev.Percent != nil {
				percent = fmt.Sprint(*ev.Percent)
			}
			got = append(got, strings.Join([]string{ev.State, fmt.Sprint(ev.Attempt), percent, ev.Result,
				ev.Reason, ev.Error, ev.BatchID}, "/"))
		}
		return id, strings.Join(got, " ")
	}
	export := func(p *amqp.Publishing) { p.Type = "demo.export" }

	t.Run("a tracked task: started, progress, succeeded with its result", func(t *testing.T) {
		id, got := events(t, 4, `{"user_id": 5}`, export)
		if want := "started/1///// progress/1/50//// progress/1/100//// succeeded/1//exports/" + id + ".csv///"; got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	})
	t.Run("a failing tracked task: retrying, then failed", func(t *testing.T) {
		_, got := events(t, 4, `{"user_id": 13}`, export)
		if want := "started/1///// retrying/1////disk full/ started/2///// failed/2///dead-letter/giving up/"; got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	})
	t.Run("a batch member, untracked handler: succeeded with batch_id", func(t *testing.T) {
		_, got := events(t, 2, `{}`, func(p *amqp.Publishing) { p.Headers[leveret.HeaderBatchID] = "batch-1" })
		if want := "started/1/////batch-1 succeeded/1/////batch-1"; got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	})
}

// With LEVERET_MAX_ATTEMPTS (the topology's 3), a tracked task failing every
// attempt reports "failed" after the last one; its copy still goes by Q.retry
// and on to Q.dlq through the alternate exchange.
func TestIntegrationJobStatusMaxAttempts(t *testing.T) {
	b := dial(t)
	q := uniqueQueue("maxattempts")
	b.declare(topology{queue: q, deadLetter: q + ".dead", bindDLQ: true})
	ch := b.channel()
	b.must(ch.ExchangeDeclare(leveret.StatusExchange, "topic", true, false, false, false, nil)) // shared: declared if absent, never deleted
	statusQueue, err := ch.QueueDeclare("", false, true, true, false, nil)
	b.must(err)
	b.startWorkerEnv(q, map[string]string{"LEVERET_MAX_ATTEMPTS": "3"}, func(w *leveret.Worker) {
		w.Handle("demo.export", []int64{1}, func(ctx context.Context, task *leveret.Task) error {
			return errors.New("disk full")
		}, leveret.Tracked())
	})
	id := leveret.NewMessageID()
	b.must(ch.QueueBind(statusQueue.Name, id, leveret.StatusExchange, false, nil))
	b.publish(q, []byte(`{"user_id": 13}`), func(p *amqp.Publishing) { p.MessageId = id; p.Type = "demo.export" })
	var got []string
	for len(got) < 6 {
		d := b.get(statusQueue.Name, func(amqp.Delivery) bool { return true }, "a status event of "+id)
		var ev leveret.JobStatus
		b.must(json.Unmarshal(d.Body, &ev))
		got = append(got, strings.Join([]string{ev.State, fmt.Sprint(ev.Attempt), ev.Reason, ev.Error}, "/"))
	}
	want := "started/1// retrying/1//disk full started/2// retrying/2//disk full started/3// failed/3/handler-error/disk full"
	if g := strings.Join(got, " "); g != want {
		t.Errorf("got  %s\nwant %s", g, want)
	}
	letter := b.get(q+".dlq", func(d amqp.Delivery) bool { return d.MessageId == id }, "the dead letter of "+id)
	if leveret.RetryCount(letter.Headers) != 3 || letter.Headers[leveret.HeaderReason] != "handler-error" {
		t.Errorf("dead letter headers %v", letter.Headers)
	}
}
