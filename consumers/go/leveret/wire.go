// Package leveret is a small worker for leveret pipelines: it consumes one work
// queue, validates every delivery against the JSON Schema files in schemas/,
// runs a handler, and settles the delivery exactly as docs/contract.md says
// (ack after the handler; on failure a confirmed copy to <queue>.retry or
// <queue>.dead, then ack; reject without requeue if the copy is not confirmed).
package leveret

import (
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Header names of the contract (docs/contract.md §2). None starts with "x-".
const (
	HeaderVersion            = "leveret-version"
	HeaderRetryCount         = "leveret-retry-count"
	HeaderReason             = "leveret-reason"
	HeaderErrorType          = "leveret-error-type"
	HeaderErrorMessage       = "leveret-error-message"
	HeaderErrorTraceback     = "leveret-error-traceback"
	HeaderFirstFailedAt      = "leveret-first-failed-at"
	HeaderLastFailedAt       = "leveret-last-failed-at"
	HeaderFailedBy           = "leveret-failed-by"
	HeaderFailedQueue        = "leveret-failed-queue"
	HeaderOriginalExchange   = "leveret-original-exchange"
	HeaderOriginalRoutingKey = "leveret-original-routing-key"
	HeaderDroppedHeaders     = "leveret-dropped-headers"
)

// Reasons written to leveret-reason.
const (
	ReasonHandlerError       = "handler-error"
	ReasonDeadLetter         = "dead-letter"
	ReasonTooLarge           = "too-large"
	ReasonInvalidContentType = "invalid-content-type"
	ReasonInvalidJSON        = "invalid-json"
	ReasonUnknownType        = "unknown-type"
	ReasonUnknownVersion     = "unknown-version"
	ReasonSchemaViolation    = "schema-violation"
)

// ContentType is the only media type a body may have.
const ContentType = "application/json"

// DefaultMaxSize is the largest body accepted (1 MiB); larger ones are dead-lettered.
const DefaultMaxSize = 1 << 20

// Queue names derived from a work queue (docs/contract.md §5).
func RetryExchange(queue string) string   { return queue + ".retry" }
func DeadExchange(queue string) string    { return queue + ".dead" }
func DeadLetterQueue(queue string) string { return queue + ".dlq" }

// Integer reads an AMQP integer field of any width or signedness. Booleans,
// floats, strings and anything else are not integers.
func Integer(v interface{}) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		if n > 1<<63-1 {
			return 0, false
		}
		return int64(n), true
	}
	return 0, false
}

// RetryCount is the number of failed attempts before this delivery: the
// leveret-retry-count header, or 0 when it is absent or not an integer.
func RetryCount(headers amqp.Table) int64 {
	n, ok := Integer(headers[HeaderRetryCount])
	if !ok || n < 0 {
		return 0
	}
	return n
}

// Version is the leveret-version header, when it is an integer.
func Version(headers amqp.Table) (int64, bool) {
	return Integer(headers[HeaderVersion])
}

// amqpInt encodes a count as an AMQP integer field: a signed 32-bit int ('I')
// when it fits, else a 64-bit one ('l'). Never a string.
func amqpInt(n int64) interface{} {
	if n >= -1<<31 && n <= 1<<31-1 {
		return int32(n)
	}
	return n
}

// IsJSON tells whether a content_type's media type is application/json,
// ignoring case and parameters such as "; charset=utf-8".
func IsJSON(contentType string) bool {
	media := strings.TrimSpace(strings.SplitN(contentType, ";", 2)[0])
	return strings.EqualFold(media, ContentType)
}

// Timestamp renders a time as ISO 8601 UTC with milliseconds, the contract's
// format: 2026-01-02T03:04:05.123+00:00.
func Timestamp(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000") + "+00:00"
}
