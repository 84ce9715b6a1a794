package leveret

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Job status (docs/contract.md, "Job status"): leveret.job.status v1 events on
// the topic exchange leveret.status, routing key = the job id (the task's
// message id). Status is reported, never required.
const (
	StatusExchange = "leveret.status"
	StatusType     = "leveret.job.status"
	HeaderBatchID  = "leveret-batch-id"
)

// JobStatus is one leveret.job.status v1 event. Empty fields are left out.
type JobStatus struct {
	JobID   string   `json:"job_id"`
	State   string   `json:"state"` // started, progress, succeeded, retrying or failed
	At      string   `json:"at"`
	Type    string   `json:"type,omitempty"`
	Attempt int64    `json:"attempt,omitempty"`
	Percent *float64 `json:"percent,omitempty"`
	Message string   `json:"message,omitempty"`
	Result  string   `json:"result,omitempty"`
	Reason  string   `json:"reason,omitempty"`
	Error   string   `json:"error,omitempty"`
	BatchID string   `json:"batch_id,omitempty"`
}

// StatusTimestamp renders a time as ISO 8601 UTC to the microsecond (the
// status store orders a job's events by it): 2026-01-02T03:04:05.123456+00:00.
func StatusTimestamp(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000") + "+00:00"
}

// BatchID is the batch a delivery belongs to: its leveret-batch-id header.
func BatchID(headers amqp.Table) (string, bool) {
	id, ok := headers[HeaderBatchID].(string)
	return id, ok
}

// statusOf returns what reports the status of d's job on pub: the event gets
// the job's id, type, attempt and batch and the time, is validated (an event
// the schema refuses, say a result reference too long, is sent with the state
// alone), then published persistent and mandatory and confirmed, continuing
// the delivery's trace. It never fails the task: a return (nothing bound to
// the job id) is logged at debug level, any other failure as a warning.
func (w *Worker) statusOf(pub *confirmer, d *amqp.Delivery, trace Trace) func(context.Context, JobStatus) {
	return func(ctx context.Context, ev JobStatus) {
		ev.JobID, ev.At, ev.Type, ev.Attempt = d.MessageId, StatusTimestamp(time.Now()), d.Type, RetryCount(d.Headers)+1
		ev.BatchID, _ = BatchID(d.Headers)
		body, _ := json.Marshal(ev)
		if err := w.router.schemas.Validate(StatusType, 1, body); err != nil {
			w.log.Warn("status.invalid", "job_id", ev.JobID, "state", ev.State, "error", err)
			ev = JobStatus{JobID: ev.JobID, State: ev.State, At: ev.At, Type: ev.Type, Attempt: ev.Attempt, BatchID: ev.BatchID}
			if body, _ = json.Marshal(ev); w.router.schemas.Validate(StatusType, 1, body) != nil {
				return
			}
		}
		correlation := d.CorrelationId
		if correlation == "" {
			correlation = d.MessageId
		}
		headers := amqp.Table{HeaderVersion: amqpInt(1)}
		trace.Child().SetHeaders(headers)
		err := pub.Publish(ctx, StatusExchange, ev.JobID, amqp.Publishing{
			ContentType:   ContentType,
			DeliveryMode:  amqp.Persistent,
			MessageId:     NewMessageID(),
			Type:          StatusType,
			Timestamp:     time.Now(),
			CorrelationId: correlation,
			Headers:       headers,
			Body:          body,
		})
		switch {
		case errors.Is(err, ErrUnroutable):
			w.log.Debug("status.unroutable", "job_id", ev.JobID, "state", ev.State)
		case err != nil:
			w.log.Warn("status.not_published", "job_id", ev.JobID, "state", ev.State, "error", err)
		}
	}
}
