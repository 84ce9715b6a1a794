package leveret

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

var now = time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)

func transient(msg string) Failure {
	return FailureOf(errors.New(msg))
}

func TestTimestampFormat(t *testing.T) {
	if got := Timestamp(now); got != "2026-01-02T03:04:05.123+00:00" {
		t.Fatalf("Timestamp = %q", got)
	}
	local := now.In(time.FixedZone("X", 5*3600))
	if got := Timestamp(local); got != "2026-01-02T03:04:05.123+00:00" {
		t.Fatalf("Timestamp of a non-UTC time = %q", got)
	}
}

func TestCopyHeadersFirstFailure(t *testing.T) {
	in := amqp.Table{HeaderVersion: int32(1), "app": "kept", "x-death": []interface{}{}, "x-custom": "gone"}
	out := CopyHeaders(in, transient("boom"), "q", "q@host:1", "ex", "rk", now)

	want := amqp.Table{
		HeaderVersion:            int32(1),
		"app":                    "kept",
		HeaderRetryCount:         int32(1),
		HeaderReason:             ReasonHandlerError,
		HeaderErrorType:          "error",
		HeaderErrorMessage:       "boom",
		HeaderErrorTraceback:     "error: boom",
		HeaderFirstFailedAt:      "2026-01-02T03:04:05.123+00:00",
		HeaderLastFailedAt:       "2026-01-02T03:04:05.123+00:00",
		HeaderFailedBy:           "q@host:1",
		HeaderFailedQueue:        "q",
		HeaderOriginalExchange:   "ex",
		HeaderOriginalRoutingKey: "rk",
	}
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("CopyHeaders =\n%#v\nwant\n%#v", out, want)
	}
	if _, ok := in[HeaderRetryCount]; ok {
		t.Fatal("CopyHeaders changed the delivery's headers")
	}
}

func TestCopyHeadersLaterFailureKeepsFirstOnes(t *testing.T) {
	in := amqp.Table{
		HeaderRetryCount:         int64(2),
		HeaderFirstFailedAt:      "2025-12-31T00:00:00.000+00:00",
		HeaderOriginalExchange:   "first-ex",
		HeaderOriginalRoutingKey: "first-rk",
		HeaderErrorTraceback:     "old trace",
	}
	out := CopyHeaders(in, transient("again"), "q", "q@h:1", "", "q", now)
	if out[HeaderRetryCount] != int32(3) {
		t.Errorf("count = %#v, want int32(3)", out[HeaderRetryCount])
	}
	for k, v := range map[string]string{
		HeaderFirstFailedAt:      "2025-12-31T00:00:00.000+00:00",
		HeaderOriginalExchange:   "first-ex",
		HeaderOriginalRoutingKey: "first-rk",
		HeaderLastFailedAt:       "2026-01-02T03:04:05.123+00:00",
	} {
		if out[k] != v {
			t.Errorf("%s = %#v, want %q", k, out[k], v)
		}
	}
	// An empty original exchange ("" for the default exchange) is present, not absent.
	out2 := CopyHeaders(amqp.Table{HeaderOriginalExchange: ""}, transient("x"), "q", "f", "ex2", "rk2", now)
	if out2[HeaderOriginalExchange] != "" {
		t.Errorf("an existing empty original exchange was replaced by %#v", out2[HeaderOriginalExchange])
	}
}

func TestCopyHeadersPermanentDropsTraceback(t *testing.T) {
	in := amqp.Table{HeaderRetryCount: int32(1), HeaderErrorTraceback: "from the last attempt"}
	f := FailureOf(invalid(ReasonSchemaViolation, "bad"))
	out := CopyHeaders(in, f, "q", "f", "ex", "rk", now)
	if _, ok := out[HeaderErrorTraceback]; ok {
		t.Error("a permanent failure kept leveret-error-traceback")
	}
	if out[HeaderRetryCount] != int32(2) {
		t.Errorf("count = %#v: the count goes up on permanent failures too", out[HeaderRetryCount])
	}
	if out[HeaderReason] != ReasonSchemaViolation || out[HeaderErrorType] != "SchemaViolation" {
		t.Errorf("reason %v, type %v", out[HeaderReason], out[HeaderErrorType])
	}
	if f.Exchange("q") != "q.dead" || transient("x").Exchange("q") != "q.retry" {
		t.Error("permanent failures go to Q.dead, transient ones to Q.retry")
	}
}

func TestRetryCountReading(t *testing.T) {
	cases := []struct {
		value interface{}
		want  int64
	}{
		{nil, 0},
		{int8(3), 3}, {int16(3), 3}, {int32(3), 3}, {int64(3), 3}, {uint8(3), 3}, {int(3), 3},
		{"1", 0},  // a string is not an integer
		{true, 0}, // nor is a boolean
		{1.0, 0},  // nor a float
		{int32(-1), 0},
	}
	for _, c := range cases {
		h := amqp.Table{}
		if c.value != nil {
			h[HeaderRetryCount] = c.value
		}
		if got := RetryCount(h); got != c.want {
			t.Errorf("RetryCount(%#v) = %d, want %d", c.value, got, c.want)
		}
		out := CopyHeaders(h, transient("x"), "q", "f", "e", "k", now)
		if out[HeaderRetryCount] != int32(c.want+1) {
			t.Errorf("copy count for %#v = %#v, want int32(%d)", c.value, out[HeaderRetryCount], c.want+1)
		}
	}
	big := amqp.Table{HeaderRetryCount: int64(1 << 40)}
	if got := CopyHeaders(big, transient("x"), "q", "f", "e", "k", now)[HeaderRetryCount]; got != int64(1<<40+1) {
		t.Errorf("a count beyond int32 = %#v", got)
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("short", 1024, false); got != "short" {
		t.Errorf("short text changed: %q", got)
	}
	long := strings.Repeat("a", 2000)
	got := Truncate(long, MaxErrorMessage, false)
	if len(got) > MaxErrorMessage || !strings.HasSuffix(got, "…[truncated]") || !strings.HasPrefix(got, "aaa") {
		t.Errorf("start kept: len %d, %q...", len(got), got[len(got)-20:])
	}
	if len(got) != MaxErrorMessage {
		t.Errorf("len = %d, want exactly %d for ASCII", len(got), MaxErrorMessage)
	}
	trace := strings.Repeat("x", 5000) + "LAST LINE"
	got = Truncate(trace, MaxTraceback, true)
	if len(got) > MaxTraceback || !strings.HasPrefix(got, "…[truncated]") || !strings.HasSuffix(got, "LAST LINE") {
		t.Errorf("end kept: len %d", len(got))
	}
	// Multi-byte runes are never split, at either end.
	wide := strings.Repeat("é", 1000) // 2000 bytes
	for _, keepEnd := range []bool{false, true} {
		got = Truncate(wide, 1001, keepEnd)
		if !utf8.ValidString(got) || len(got) > 1001 {
			t.Errorf("keepEnd=%v: invalid or too long (%d bytes)", keepEnd, len(got))
		}
	}
}

func TestCopyHeadersTruncatesLongErrors(t *testing.T) {
	f := transient(strings.Repeat("m", 5000))
	f.Traceback = strings.Repeat("t", 10000) + "end"
	f.ErrorType = strings.Repeat("T", 3000)
	out := CopyHeaders(nil, f, "q", strings.Repeat("f", 3000), "e", "k", now)
	for k, limit := range map[string]int{
		HeaderErrorMessage:   MaxErrorMessage,
		HeaderErrorTraceback: MaxTraceback,
		HeaderErrorType:      MaxHeaderValue,
		HeaderFailedBy:       MaxHeaderValue,
	} {
		if s := out[k].(string); len(s) > limit {
			t.Errorf("%s is %d bytes, over %d", k, len(s), limit)
		}
	}
	if !strings.HasSuffix(out[HeaderErrorTraceback].(string), "end") {
		t.Error("the traceback lost its end")
	}
}

func TestFitDropsTracebackThenLargestAppHeaders(t *testing.T) {
	h := amqp.Table{
		HeaderRetryCount:     int32(1),
		HeaderErrorTraceback: strings.Repeat("t", 4000),
		"big":                strings.Repeat("b", 70000),
		"medium":             strings.Repeat("m", 30000),
		"small":              "s",
	}
	Fit(h, MaxHeaders)
	if EncodedSize(h) > MaxHeaders {
		t.Fatalf("still %d bytes", EncodedSize(h))
	}
	if _, ok := h[HeaderErrorTraceback]; ok {
		t.Error("the traceback should go first")
	}
	if _, ok := h["big"]; ok {
		t.Error("the largest application header should be dropped")
	}
	if h["medium"] == nil || h["small"] != "s" {
		t.Error("headers that fit were dropped")
	}
	if h[HeaderDroppedHeaders] != "big" {
		t.Errorf("leveret-dropped-headers = %#v", h[HeaderDroppedHeaders])
	}

	fits := amqp.Table{HeaderErrorTraceback: "short", "a": "b"}
	Fit(fits, MaxHeaders)
	if fits[HeaderErrorTraceback] != "short" {
		t.Error("a table within budget must not change")
	}
	own := amqp.Table{"leveret-huge": strings.Repeat("x", 80000)}
	Fit(own, MaxHeaders)
	if own["leveret-huge"] == nil {
		t.Error("a leveret- header was dropped")
	}
}

func TestCopyPublishing(t *testing.T) {
	stamp := time.Unix(1700000000, 0)
	d := &amqp.Delivery{
		ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 1, Priority: 3,
		CorrelationId: "c", ReplyTo: "r", Expiration: "60000", MessageId: "m", Timestamp: stamp,
		Type: "t", UserId: "guest", AppId: "a", Body: []byte(`{"x":1}`),
	}
	h := amqp.Table{"k": "v"}
	p := CopyPublishing(d, h, now)
	want := amqp.Publishing{
		Headers: h, ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 2,
		Priority: 3, CorrelationId: "c", ReplyTo: "r", MessageId: "m", Timestamp: stamp, Type: "t",
		AppId: "a", Body: []byte(`{"x":1}`),
	}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("CopyPublishing =\n%#v\nwant\n%#v", p, want)
	}
	if p.Expiration != "" || p.UserId != "" {
		t.Error("expiration and user_id must be dropped")
	}
	d.Timestamp = time.Time{}
	if CopyPublishing(d, h, now).Timestamp != now {
		t.Error("a missing timestamp is set to now")
	}
}

func TestFailureOf(t *testing.T) {
	f := FailureOf(&ConformanceFailure{Attempt: 1, FailTimes: 2})
	if f.Permanent || f.Reason != ReasonHandlerError || f.ErrorType != "ConformanceFailure" ||
		f.Message != "failing on purpose: attempt 1 of 2" || f.Traceback == "" {
		t.Errorf("conformance failure: %+v", f)
	}
	f = FailureOf(DeadLetter(errors.New("give up")))
	if !f.Permanent || f.Reason != ReasonDeadLetter || f.Message != "give up" {
		t.Errorf("dead letter: %+v", f)
	}
	f = FailureOf(&TimeoutError{Timeout: time.Second})
	if f.Permanent || f.ErrorType != "TimeoutError" {
		t.Errorf("timeout: %+v", f)
	}
	f = FailureOf(&PanicError{Value: "oops", Stack: []byte("goroutine 1")})
	if f.Permanent || !strings.Contains(f.Traceback, "goroutine 1") {
		t.Errorf("panic: %+v", f)
	}
	wrapped := FailureOf(fmt.Errorf("reading: %w", &TimeoutError{Timeout: time.Second}))
	if wrapped.ErrorType != "TimeoutError" {
		t.Errorf("a wrapped error is named by what it wraps: %q", wrapped.ErrorType)
	}
}

func TestNewMessageID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	a, b := NewMessageID(), NewMessageID()
	if !re.MatchString(a) || a == b {
		t.Errorf("ids %q %q", a, b)
	}
}
