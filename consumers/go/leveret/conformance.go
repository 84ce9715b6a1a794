package leveret

import (
	"context"
	"fmt"
	"time"
)

// Type and receipt of the conformance battery (docs/contract.md §8).
const (
	ConformanceType = "leveret.conformance"
	ReceiptType     = "leveret.conformance.receipt"
)

// ConformanceFailure is the failure a conformance task asks for.
type ConformanceFailure struct{ Attempt, FailTimes int64 }

func (e *ConformanceFailure) Error() string {
	return fmt.Sprintf("failing on purpose: attempt %d of %d", e.Attempt, e.FailTimes)
}
func (e *ConformanceFailure) ErrorType() string { return "ConformanceFailure" }

type conformanceTask struct {
	FailTimes         int64   `json:"fail_times"`
	SleepMs           int64   `json:"sleep_ms"`
	Note              *string `json:"note"`
	ReceiptExchange   *string `json:"receipt_exchange"`
	ReceiptRoutingKey *string `json:"receipt_routing_key"`
}

type receipt struct {
	MessageID string `json:"message_id"`
	Attempt   int64  `json:"attempt"`
	Consumer  string `json:"consumer"`
}

// Conformance returns the handler of leveret.conformance v1: it sleeps
// sleep_ms, fails (transient) while the attempt is at most fail_times, and
// otherwise publishes a leveret.conformance.receipt v1 naming consumer to
// receipt_exchange with receipt_routing_key, confirmed, before returning.
func Conformance(consumer string) HandlerFunc {
	return func(ctx context.Context, t *Task) error {
		var task conformanceTask
		if err := t.Decode(&task); err != nil {
			return err
		}
		if task.SleepMs > 0 {
			timer := time.NewTimer(time.Duration(task.SleepMs) * time.Millisecond)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			}
		}
		if t.Attempt <= task.FailTimes {
			return &ConformanceFailure{Attempt: t.Attempt, FailTimes: task.FailTimes}
		}
		if task.ReceiptExchange == nil {
			return nil
		}
		key := ""
		if task.ReceiptRoutingKey != nil {
			key = *task.ReceiptRoutingKey
		}
		_, err := t.Publish(ctx, *task.ReceiptExchange, key, ReceiptType, 1,
			receipt{MessageID: t.MessageID, Attempt: t.Attempt, Consumer: consumer})
		return err
	}
}
