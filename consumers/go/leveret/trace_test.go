package leveret

import (
	"context"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	givenTraceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
	givenParentID = "00f067aa0ba902b7"
	givenTrace    = "00-" + givenTraceID + "-" + givenParentID + "-01"
)

func TestParseTraceparentReadsVersion00(t *testing.T) {
	for _, value := range []interface{}{givenTrace, []byte(givenTrace)} {
		got, ok := ParseTraceparent(value)
		if !ok || got != (Trace{TraceID: givenTraceID, ParentID: givenParentID, Flags: "01"}) {
			t.Errorf("ParseTraceparent(%#v) = %+v, %v", value, got, ok)
		}
		if got.Traceparent() != givenTrace {
			t.Errorf("Traceparent() = %q", got.Traceparent())
		}
	}
	if got, _ := ParseTraceparent("00-" + givenTraceID + "-" + givenParentID + "-00"); got.Flags != "00" {
		t.Errorf("flags %q", got.Flags)
	}
}

func TestParseTraceparentRefusesAnythingElse(t *testing.T) {
	invalid := []interface{}{
		nil, 42, int32(1), "",
		"01-" + givenTraceID + "-" + givenParentID + "-01", // another version
		"ff-" + givenTraceID + "-" + givenParentID + "-01",
		"00-" + strings.ToUpper(givenTraceID) + "-" + givenParentID + "-01", // upper case
		"00-" + givenTraceID[1:] + "-" + givenParentID + "-01",              // short trace-id
		"00-" + givenTraceID + "-" + givenParentID + "0-01",                 // long parent-id
		"00-" + givenTraceID + "-" + givenParentID + "-1",
		givenTrace + "-extra",
		" " + givenTrace, givenTrace + "\n",
		"00-" + strings.Repeat("0", 32) + "-" + givenParentID + "-01", // all-zero trace-id
		"00-" + givenTraceID + "-" + strings.Repeat("0", 16) + "-01",  // all-zero parent-id
		"00-" + strings.Replace(givenTraceID, "4", "g", 1) + "-" + givenParentID + "-01",
		"00_" + givenTraceID + "-" + givenParentID + "-01",
	}
	for _, value := range invalid {
		if got, ok := ParseTraceparent(value); ok {
			t.Errorf("ParseTraceparent(%#v) = %+v, want invalid", value, got)
		}
	}
}

func TestNewTraceAndChild(t *testing.T) {
	a, b := NewTrace(), NewTrace()
	if a.Flags != "01" || a.TraceID == b.TraceID || a.ParentID == b.ParentID {
		t.Errorf("new traces %+v %+v", a, b)
	}
	if _, ok := ParseTraceparent(a.Traceparent()); !ok {
		t.Errorf("a new trace is not valid: %s", a.Traceparent())
	}
	parent, _ := ParseTraceparent("00-" + givenTraceID + "-" + givenParentID + "-00")
	parent.Tracestate = "congo=1"
	child := parent.Child()
	if child.TraceID != givenTraceID || child.Flags != "00" || child.Tracestate != "congo=1" ||
		child.ParentID == givenParentID || child.ParentID == parent.Child().ParentID {
		t.Errorf("child %+v of %+v", child, parent)
	}
	if _, ok := ParseTraceparent(child.Traceparent()); !ok {
		t.Errorf("a child is not valid: %s", child.Traceparent())
	}
}

func TestTraceOfADelivery(t *testing.T) {
	got := TraceOf(amqp.Table{HeaderTraceparent: givenTrace, HeaderTracestate: "congo=t61rcWkgMzE"})
	if got.TraceID != givenTraceID || got.ParentID != givenParentID || got.Tracestate != "congo=t61rcWkgMzE" {
		t.Errorf("TraceOf = %+v", got)
	}
	// None, or an invalid one, starts a new trace, without the tracestate.
	for _, headers := range []amqp.Table{nil, {}, {HeaderTraceparent: "garbage", HeaderTracestate: "congo=1"}} {
		got := TraceOf(headers)
		if got.Flags != "01" || got.TraceID == givenTraceID || got.Tracestate != "" {
			t.Errorf("TraceOf(%v) = %+v", headers, got)
		}
	}
}

func TestSetHeadersReplacesTheTraceHeaders(t *testing.T) {
	headers := amqp.Table{HeaderTraceparent: "garbage", HeaderTracestate: "stale=1", "app": "kept"}
	trace := NewTrace()
	trace.SetHeaders(headers)
	if headers[HeaderTraceparent] != trace.Traceparent() || headers["app"] != "kept" {
		t.Errorf("headers %v", headers)
	}
	if _, ok := headers[HeaderTracestate]; ok {
		t.Error("a trace without tracestate left one behind")
	}
}

func TestACopyKeepsTheTraceHeadersUnchanged(t *testing.T) {
	in := amqp.Table{HeaderVersion: int32(1), HeaderTraceparent: givenTrace, HeaderTracestate: "congo=1"}
	out := CopyHeaders(in, transient("boom"), "q", "q@h:1", "ex", "rk", now)
	if out[HeaderTraceparent] != givenTrace || out[HeaderTracestate] != "congo=1" {
		t.Errorf("copy headers %v", out)
	}
	// A delivery without one gets none in its copy: the copy is the message, not a follow-up.
	if _, ok := CopyHeaders(amqp.Table{}, transient("boom"), "q", "q@h:1", "ex", "rk", now)[HeaderTraceparent]; ok {
		t.Error("the copy of an untraced delivery got a traceparent")
	}
}

func TestPublishContinuesTheTaskTrace(t *testing.T) {
	var sent []amqp.Publishing
	task := &Task{
		MessageID: "task-1",
		schemas:   NewSchemas(schemaDir),
		trace:     Trace{TraceID: givenTraceID, ParentID: givenParentID, Flags: "01", Tracestate: "congo=1"},
		publish: func(_ context.Context, _, _ string, msg amqp.Publishing) error {
			sent = append(sent, msg)
			return nil
		},
	}
	for i := 0; i < 2; i++ {
		if _, err := task.Publish(context.Background(), "ex", "", ReceiptType, 1,
			receipt{MessageID: "task-1", Attempt: 1, Consumer: "go"}); err != nil {
			t.Fatal(err)
		}
	}
	a, okA := ParseTraceparent(sent[0].Headers[HeaderTraceparent])
	b, okB := ParseTraceparent(sent[1].Headers[HeaderTraceparent])
	if !okA || !okB || a.TraceID != givenTraceID || a.Flags != "01" || a.ParentID == givenParentID ||
		a.ParentID == b.ParentID || b.TraceID != givenTraceID {
		t.Errorf("follow-ups %v, %v", sent[0].Headers, sent[1].Headers)
	}
	if sent[0].Headers[HeaderTracestate] != "congo=1" {
		t.Errorf("tracestate %#v", sent[0].Headers[HeaderTracestate])
	}
}
