package leveret

import (
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Limits on what a copy carries (docs/contract.md §2 and §4).
const (
	MaxErrorMessage = 1024      // leveret-error-message, bytes of UTF-8
	MaxTraceback    = 4096      // leveret-error-traceback, its last bytes
	MaxHeaderValue  = 1024      // leveret-error-type, leveret-failed-by, leveret-dropped-headers
	MaxHeaders      = 64 * 1024 // the encoded header table of a copy
)

const truncatedMark = "…[truncated]"

// Failure is why an attempt failed: what the copy's headers say about it.
type Failure struct {
	Reason    string // a Reason* constant
	Permanent bool   // to <queue>.dead; otherwise to <queue>.retry
	ErrorType string // the error's kind, e.g. "TimeoutError"
	Message   string // the error's text
	Traceback string // a stack or error chain; kept on transient failures only
}

// Exchange is where the copy of a delivery that failed this way goes.
func (f Failure) Exchange(queue string) string {
	if f.Permanent {
		return DeadExchange(queue)
	}
	return RetryExchange(queue)
}

// CopyHeaders builds the header table of a failed delivery's copy: the
// delivery's headers minus every x- header, the count plus one as an AMQP
// integer, the failure headers, and the first-failure headers only if absent.
// The result is shrunk to fit MaxHeaders.
//
// exchange and routingKey are the failed delivery's own; failedBy names the
// consumer (leveret writes <queue>@<host>:<pid>).
func CopyHeaders(in amqp.Table, f Failure, queue, failedBy, exchange, routingKey string, now time.Time) amqp.Table {
	out := amqp.Table{}
	for k, v := range in {
		if !strings.HasPrefix(k, "x-") {
			out[k] = v
		}
	}
	stamp := Timestamp(now)
	message := f.Message
	if message == "" {
		message = f.ErrorType
	}
	out[HeaderRetryCount] = amqpInt(RetryCount(in) + 1)
	out[HeaderReason] = f.Reason
	out[HeaderErrorType] = Truncate(f.ErrorType, MaxHeaderValue, false)
	out[HeaderErrorMessage] = Truncate(message, MaxErrorMessage, false)
	out[HeaderLastFailedAt] = stamp
	out[HeaderFailedBy] = Truncate(failedBy, MaxHeaderValue, false)
	out[HeaderFailedQueue] = queue
	setDefault(out, HeaderFirstFailedAt, stamp)
	setDefault(out, HeaderOriginalExchange, exchange)
	setDefault(out, HeaderOriginalRoutingKey, routingKey)
	if f.Permanent || f.Traceback == "" {
		delete(out, HeaderErrorTraceback)
	} else {
		out[HeaderErrorTraceback] = Truncate(f.Traceback, MaxTraceback, true)
	}
	Fit(out, MaxHeaders)
	return out
}

func setDefault(t amqp.Table, key string, value interface{}) {
	if _, ok := t[key]; !ok {
		t[key] = value
	}
}

// CopyPublishing builds the copy of a failed delivery: the same body byte for
// byte and the same properties, except that expiration and user_id are dropped,
// delivery_mode is 2 and the headers are the given ones.
func CopyPublishing(d *amqp.Delivery, headers amqp.Table, now time.Time) amqp.Publishing {
	stamp := d.Timestamp
	if stamp.IsZero() {
		stamp = now
	}
	return amqp.Publishing{
		Headers:         headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       stamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}

// Truncate cuts text to at most limit bytes of UTF-8, marking the cut with
// "…[truncated]": at the end when the start is kept, at the start when the end
// is kept (keepEnd, for stack traces, whose last lines say the most). A rune is
// never split.
func Truncate(text string, limit int, keepEnd bool) string {
	text = strings.ToValidUTF8(text, "\uFFFD")
	if len(text) <= limit {
		return text
	}
	room := limit - len(truncatedMark)
	if room <= 0 {
		return ""
	}
	if keepEnd {
		start := len(text) - room
		for start < len(text) && !utf8.RuneStart(text[start]) {
			start++
		}
		return truncatedMark + text[start:]
	}
	end := room
	for end > 0 && !utf8.RuneStart(text[end]) {
		end--
	}
	return text[:end] + truncatedMark
}

// Fit shrinks a header table in place until its encoded size is within budget:
// the traceback goes first, then the largest application headers, whose names
// are recorded in leveret-dropped-headers. leveret- headers always stay.
func Fit(headers amqp.Table, budget int) {
	if EncodedSize(headers) <= budget {
		return
	}
	delete(headers, HeaderErrorTraceback)
	var app []string
	for k := range headers {
		if !strings.HasPrefix(k, "leveret-") {
			app = append(app, k)
		}
	}
	size := func(k string) int { return EncodedSize(amqp.Table{k: headers[k]}) }
	sort.SliceStable(app, func(i, j int) bool {
		if si, sj := size(app[i]), size(app[j]); si != sj {
			return si > sj
		}
		return app[i] < app[j]
	})
	var dropped []string
	for _, name := range app {
		if EncodedSize(headers) <= budget {
			break
		}
		delete(headers, name)
		dropped = append(dropped, name)
	}
	if len(dropped) > 0 {
		headers[HeaderDroppedHeaders] = Truncate(strings.Join(dropped, ","), MaxHeaderValue, false)
	}
}

// EncodedSize is an upper bound of the AMQP field-table encoding of a header
// value, in bytes (the same estimate as leveret/retry.py).
func EncodedSize(value interface{}) int {
	switch v := value.(type) {
	case amqp.Table:
		n := 4
		for k, item := range v {
			n += 1 + len(k) + 1 + EncodedSize(item)
		}
		return n
	case []interface{}:
		n := 4
		for _, item := range v {
			n += 1 + EncodedSize(item)
		}
		return n
	case string:
		return 4 + len(v)
	case []byte:
		return 4 + len(v)
	default:
		return 9 // numbers, booleans, timestamps, decimals, void
	}
}
