package leveret

import (
	"crypto/rand"
	"encoding/hex"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// W3C Trace Context (version 00) on leveret messages: one traceparent header
// carries a trace across languages (docs/contract.md, "Trace context").
//
//	traceparent = 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>
//
// A delivery without a valid traceparent is never an error: it starts a new
// trace, which its follow-ups continue.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
	// NewTraceFlags are the flags of a trace that starts here: sampled.
	NewTraceFlags = "01"
)

// Trace is one trace context. Tracestate travels with it unchanged, or is "".
type Trace struct {
	TraceID    string // 32 lowercase hex digits, not all zero
	ParentID   string // 16 lowercase hex digits, not all zero
	Flags      string // 2 lowercase hex digits
	Tracestate string
}

// Traceparent is the header value of t.
func (t Trace) Traceparent() string {
	return "00-" + t.TraceID + "-" + t.ParentID + "-" + t.Flags
}

// ParseTraceparent reads a traceparent header value: a long string, or a byte
// array. It fails for anything but version 00 in lowercase hex of the right
// lengths with a trace-id and a parent-id that are not all zeros.
func ParseTraceparent(value interface{}) (Trace, bool) {
	var s string
	switch v := value.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	default:
		return Trace{}, false
	}
	if len(s) != 55 || s[:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return Trace{}, false
	}
	t := Trace{TraceID: s[3:35], ParentID: s[36:52], Flags: s[53:55]}
	if !lowerHex(t.TraceID) || !lowerHex(t.ParentID) || !lowerHex(t.Flags) || zeros(t.TraceID) || zeros(t.ParentID) {
		return Trace{}, false
	}
	return t, true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func zeros(s string) bool { return strings.Trim(s, "0") == "" }

// randomHex returns n random bytes as lowercase hex, never all zeros (which
// the format forbids).
func randomHex(n int) string {
	b := make([]byte, n)
	for {
		if _, err := rand.Read(b); err != nil {
			panic(err)
		}
		if s := hex.EncodeToString(b); !zeros(s) {
			return s
		}
	}
}

// NewTrace starts a trace: random trace-id and parent-id, sampled.
func NewTrace() Trace {
	return Trace{TraceID: randomHex(16), ParentID: randomHex(8), Flags: NewTraceFlags}
}

// Child is a message sent on behalf of t: the same trace, flags and
// tracestate, a parent-id of its own.
func (t Trace) Child() Trace {
	t.ParentID = randomHex(8)
	return t
}

// TraceOf is the trace a message with these headers belongs to: its own, with
// its tracestate, or a new one when it has no valid traceparent (a tracestate
// that came with an invalid one is not carried into it).
func TraceOf(headers amqp.Table) Trace {
	t, ok := ParseTraceparent(headers[HeaderTraceparent])
	if !ok {
		return NewTrace()
	}
	switch state := headers[HeaderTracestate].(type) {
	case string:
		t.Tracestate = state
	case []byte:
		t.Tracestate = string(state)
	}
	return t
}

// SetHeaders puts t in a header table as a message's own trace context,
// replacing any traceparent and tracestate there.
func (t Trace) SetHeaders(headers amqp.Table) {
	headers[HeaderTraceparent] = t.Traceparent()
	delete(headers, HeaderTracestate)
	if t.Tracestate != "" {
		headers[HeaderTracestate] = t.Tracestate
	}
}
