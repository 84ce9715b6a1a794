package leveret

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The repository's schemas, from consumers/go/leveret.
var schemaDir = filepath.Join("..", "..", "..", "schemas")

func testRouter(t *testing.T) *router {
	t.Helper()
	noop := func(context.Context, *Task) error { return nil }
	r := &router{
		queue:   "q",
		maxSize: 64,
		schemas: NewSchemas(schemaDir),
		handlers: map[string]*handler{
			"demo.export":   {fn: noop, versions: map[int64]bool{1: true, 2: true}},
			ConformanceType: {fn: noop, versions: map[int64]bool{1: true}},
		},
	}
	if err := r.check(); err != nil {
		t.Fatal(err)
	}
	return r
}

func delivery(body string, mutate ...func(*amqp.Delivery)) *amqp.Delivery {
	d := &amqp.Delivery{
		ContentType: "application/json",
		Type:        ConformanceType,
		MessageId:   "id-1",
		Headers:     amqp.Table{HeaderVersion: int32(1)},
		Body:        []byte(body),
	}
	for _, m := range mutate {
		m(d)
	}
	return d
}

func reasonOf(err error) string {
	var m *MessageError
	if errors.As(err, &m) {
		return m.Reason
	}
	if err != nil {
		return "unexpected: " + err.Error()
	}
	return ""
}

func TestResolveDecisions(t *testing.T) {
	r := testRouter(t)
	cases := []struct {
		name string
		d    *amqp.Delivery
		want string // "" for accepted
	}{
		{"valid", delivery(`{"fail_times": 1}`), ""},
		{"empty object uses defaults", delivery(`{}`), ""},
		{"unknown fields are ignored", delivery(`{"extra": [1, 2]}`), ""},
		{"charset parameter and case", delivery(`{}`, func(d *amqp.Delivery) { d.ContentType = "Application/JSON; charset=utf-8" }), ""},
		{"too large", delivery(`{"note": "` + strings.Repeat("x", 100) + `"}`), ReasonTooLarge},
		{"no content type", delivery(`{}`, func(d *amqp.Delivery) { d.ContentType = "" }), ReasonInvalidContentType},
		{"text/plain", delivery(`{}`, func(d *amqp.Delivery) { d.ContentType = "text/plain" }), ReasonInvalidContentType},
		{"no type", delivery(`{}`, func(d *amqp.Delivery) { d.Type = "" }), ReasonUnknownType},
		{"unhandled type", delivery(`{}`, func(d *amqp.Delivery) { d.Type = "other.type" }), ReasonUnknownType},
		{"no version", delivery(`{}`, func(d *amqp.Delivery) { d.Headers = nil }), ReasonUnknownVersion},
		{"string version", delivery(`{}`, func(d *amqp.Delivery) { d.Headers[HeaderVersion] = "1" }), ReasonUnknownVersion},
		{"boolean version", delivery(`{}`, func(d *amqp.Delivery) { d.Headers[HeaderVersion] = true }), ReasonUnknownVersion},
		{"unhandled version", delivery(`{}`, func(d *amqp.Delivery) { d.Headers[HeaderVersion] = int64(99) }), ReasonUnknownVersion},
		{"int8 version is fine", delivery(`{}`, func(d *amqp.Delivery) { d.Headers[HeaderVersion] = int8(1) }), ""},
		{"invalid JSON", delivery(`{not json`), ReasonInvalidJSON},
		{"invalid UTF-8", delivery("{\"note\": \"\xff\"}"), ReasonInvalidJSON},
		{"string for integer", delivery(`{"fail_times": "1"}`), ReasonSchemaViolation},
		{"boolean for integer", delivery(`{"fail_times": true}`), ReasonSchemaViolation},
		{"below minimum", delivery(`{"fail_times": -1}`), ReasonSchemaViolation},
		{"above maximum", delivery(`{"sleep_ms": 600001}`), ReasonSchemaViolation},
		{"not an object", delivery(`[1]`), ReasonSchemaViolation},
		{"anyOf string or null", delivery(`{"note": 5}`), ReasonSchemaViolation},
		{"export v2", delivery(`{"user_id": 7, "columns": ["a"]}`, func(d *amqp.Delivery) {
			d.Type = "demo.export"
			d.Headers[HeaderVersion] = int32(2)
		}), ""},
		{"export enum", delivery(`{"user_id": 7, "format": "pdf"}`, func(d *amqp.Delivery) { d.Type = "demo.export" }), ReasonSchemaViolation},
		{"export required", delivery(`{"format": "csv"}`, func(d *amqp.Delivery) { d.Type = "demo.export" }), ReasonSchemaViolation},
		{"export items", delivery(`{"user_id": 7, "columns": [1]}`, func(d *amqp.Delivery) {
			d.Type = "demo.export"
			d.Headers[HeaderVersion] = int32(2)
		}), ReasonSchemaViolation},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			task, fn, err := r.resolve(c.d)
			if got := reasonOf(err); got != c.want {
				t.Fatalf("reason %q, want %q (%v)", got, c.want, err)
			}
			if c.want == "" && (task == nil || fn == nil) {
				t.Fatal("an accepted delivery has no task or handler")
			}
		})
	}
}

// The checks run in the contract's order: the first failing one names the reason.
func TestResolveOrder(t *testing.T) {
	r := testRouter(t)
	everythingWrong := &amqp.Delivery{ContentType: "text/plain", Body: []byte(strings.Repeat("{", 100))}
	if got := reasonOf(func() error { _, _, err := r.resolve(everythingWrong); return err }()); got != ReasonTooLarge {
		t.Errorf("size first: got %q", got)
	}
	everythingWrong.Body = []byte("{")
	for _, step := range []struct {
		fix  func(*amqp.Delivery)
		want string
	}{
		{func(d *amqp.Delivery) {}, ReasonInvalidContentType},
		{func(d *amqp.Delivery) { d.ContentType = "application/json" }, ReasonUnknownType},
		{func(d *amqp.Delivery) { d.Type = ConformanceType }, ReasonUnknownVersion},
		{func(d *amqp.Delivery) { d.Headers = amqp.Table{HeaderVersion: int32(1)} }, ReasonInvalidJSON},
		{func(d *amqp.Delivery) { d.Body = []byte(`{"fail_times":"x"}`) }, ReasonSchemaViolation},
	} {
		step.fix(everythingWrong)
		_, _, err := r.resolve(everythingWrong)
		if got := reasonOf(err); got != step.want {
			t.Errorf("got %q, want %q", got, step.want)
		}
	}
}

func TestResolveTask(t *testing.T) {
	r := testRouter(t)
	d := delivery(`{"fail_times": 2}`, func(d *amqp.Delivery) {
		d.Headers[HeaderRetryCount] = int64(2)
		d.CorrelationId = "job-1"
		d.Redelivered = true
	})
	task, _, err := r.resolve(d)
	if err != nil {
		t.Fatal(err)
	}
	if task.Attempt != 3 || task.Version != 1 || task.MessageID != "id-1" || task.CorrelationID != "job-1" ||
		!task.Redelivered || task.Queue != "q" || task.Type != ConformanceType {
		t.Errorf("task %+v", task)
	}
	var body struct {
		FailTimes int `json:"fail_times"`
	}
	if err := task.Decode(&body); err != nil || body.FailTimes != 2 {
		t.Errorf("Decode: %v, %+v", err, body)
	}
}

// Draft-07 calls 1.0 an integer; the typed decode does not, and says so as a
// permanent schema-violation rather than a retry.
func TestDecodeMismatchIsPermanent(t *testing.T) {
	r := testRouter(t)
	task, _, err := r.resolve(delivery(`{"fail_times": 1.0}`))
	if err != nil {
		t.Fatalf("draft-07 accepts 1.0 as an integer: %v", err)
	}
	err = Conformance("go")(context.Background(), task)
	if got := reasonOf(err); got != ReasonSchemaViolation {
		t.Fatalf("reason %q (%v)", got, err)
	}
	if f := FailureOf(err); !f.Permanent {
		t.Error("a decode failure must be permanent")
	}
}

func TestConformanceHandlerFailsWhileAsked(t *testing.T) {
	r := testRouter(t)
	for attempt, want := range map[int64]bool{1: true, 2: true, 3: false} {
		d := delivery(`{"fail_times": 2}`, func(d *amqp.Delivery) { d.Headers[HeaderRetryCount] = attempt - 1 })
		task, _, err := r.resolve(d)
		if err != nil {
			t.Fatal(err)
		}
		err = Conformance("go")(context.Background(), task)
		var cf *ConformanceFailure
		if failed := errors.As(err, &cf); failed != want {
			t.Errorf("attempt %d: err %v, want failure %v", attempt, err, want)
		}
	}
}

func TestCheckRefusesMissingSchemas(t *testing.T) {
	r := testRouter(t)
	r.handlers["demo.export"].versions[3] = true
	if err := r.check(); err == nil || !strings.Contains(err.Error(), "demo.export v3") {
		t.Errorf("check = %v", err)
	}
	if _, err := NewSchemas(schemaDir).Load("../secrets", 1); err == nil {
		t.Error("a type with a path in it must not load")
	}
	empty := &router{schemas: NewSchemas(schemaDir), handlers: map[string]*handler{}}
	if err := empty.check(); err == nil {
		t.Error("no handlers is an error")
	}
}

func TestPublishValidatesThePayload(t *testing.T) {
	var sent []amqp.Publishing
	task := &Task{
		MessageID: "task-1",
		schemas:   NewSchemas(schemaDir),
		publish: func(_ context.Context, exchange, key string, msg amqp.Publishing) error {
			sent = append(sent, msg)
			return nil
		},
	}
	if _, err := task.Publish(context.Background(), "ex", "", ReceiptType, 1,
		receipt{MessageID: "", Attempt: 0, Consumer: "go"}); err == nil {
		t.Error("an invalid receipt was published")
	}
	id, err := task.Publish(context.Background(), "ex", "", ReceiptType, 1,
		receipt{MessageID: "task-1", Attempt: 1, Consumer: "go"})
	if err != nil || len(sent) != 1 {
		t.Fatalf("publish: %v", err)
	}
	m := sent[0]
	if m.MessageId != id || m.ContentType != ContentType || m.DeliveryMode != 2 || m.Type != ReceiptType ||
		m.CorrelationId != "task-1" || m.Timestamp.IsZero() || m.Headers[HeaderVersion] != int32(1) {
		t.Errorf("publishing %+v", m)
	}
	if string(m.Body) != `{"message_id":"task-1","attempt":1,"consumer":"go"}` {
		t.Errorf("body %s", m.Body)
	}
}
