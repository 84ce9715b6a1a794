package leveret

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// HandlerFunc processes one task whose body is valid against its schema.
//
// Return nil and the delivery is acked. Return an error and the task goes down
// the retry path (a transient failure, reason handler-error); wrap it with
// DeadLetter to send the task straight to the dead-letter queue instead. ctx
// ends at the handler's timeout; a worker that is shutting down lets running
// handlers finish and does not cancel ctx.
type HandlerFunc func(ctx context.Context, task *Task) error

// Task is what a handler gets: the validated body and the delivery's facts.
type Task struct {
	Queue         string
	MessageID     string
	Type          string
	Version       int64
	Attempt       int64 // leveret-retry-count + 1
	CorrelationID string
	Redelivered   bool
	Headers       amqp.Table
	Body          []byte // UTF-8 JSON, valid against schemas/<type>.v<version>.json
	// TraceID names the trace the delivery belongs to: its traceparent's, or
	// a new one when it came without a valid traceparent.
	TraceID string

	// Result may be set by a tracked handler: a reference to its result (a
	// URL, a path), reported with the succeeded status.
	Result string

	schemas *Schemas
	trace   Trace // the delivery's trace, which every message sent for it continues
	publish func(ctx context.Context, exchange, key string, msg amqp.Publishing) error
	status  func(ctx context.Context, ev JobStatus) // set when the task is tracked
}

// Tracked tells whether the task reports its status (a tracked handler, or a
// batch member).
func (t *Task) Tracked() bool { return t.status != nil }

// Progress reports a tracked task's progress to leveret.status: a percent (0
// to 100) and a line of text. It returns once the broker confirmed it; a
// failure is logged, never returned. For an untracked task it does nothing.
func (t *Task) Progress(ctx context.Context, percent float64, message string) {
	if t.status != nil {
		t.status(ctx, JobStatus{State: "progress", Percent: &percent, Message: message})
	}
}

// Decode unmarshals the body into v. A body that passed the JSON Schema but
// does not fit v (say 1.0 for an int field, which draft-07 calls an integer)
// is a permanent schema-violation, so returning this error dead-letters the
// task rather than retrying it.
func (t *Task) Decode(v interface{}) error {
	if err := json.Unmarshal(t.Body, v); err != nil {
		return invalid(ReasonSchemaViolation, "%s v%d: %v", t.Type, t.Version, err)
	}
	return nil
}

// Publish sends a message the way the contract's publishers do (§3): the
// payload validated against schemas/<msgType>.v<version>.json, serialised as
// JSON, with content_type, delivery_mode 2, a fresh message_id, type,
// timestamp, the task's correlation id (or its message id), an integer
// leveret-version header and a traceparent that continues the task's trace;
// mandatory, on the worker's confirm channel. It returns the new message id
// once the broker confirmed the message.
func (t *Task) Publish(ctx context.Context, exchange, routingKey, msgType string, version int64, payload interface{}) (string, error) {
	if t.publish == nil {
		return "", fmt.Errorf("this task has no publisher (it is not in a worker)")
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return "", err
	}
	if err := t.schemas.Validate(msgType, version, body); err != nil {
		return "", fmt.Errorf("refusing to publish an invalid message: %w", err)
	}
	correlation := t.CorrelationID
	if correlation == "" {
		correlation = t.MessageID
	}
	trace := t.trace
	if trace.TraceID == "" { // a Task made outside a worker
		trace = TraceOf(t.Headers)
	}
	headers := amqp.Table{HeaderVersion: amqpInt(version)}
	trace.Child().SetHeaders(headers)
	id := NewMessageID()
	msg := amqp.Publishing{
		ContentType:   ContentType,
		DeliveryMode:  amqp.Persistent,
		MessageId:     id,
		Type:          msgType,
		Timestamp:     time.Now(),
		CorrelationId: correlation,
		Headers:       headers,
		Body:          body,
	}
	if err := t.publish(ctx, exchange, routingKey, msg); err != nil {
		return "", fmt.Errorf("publishing %s to %q with key %q: %w", msgType, exchange, routingKey, err)
	}
	return id, nil
}

// NewMessageID returns a random (version 4) UUID.
func NewMessageID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
