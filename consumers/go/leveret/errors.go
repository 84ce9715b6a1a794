package leveret

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// MessageError is a permanent failure found while checking a delivery (steps 1
// to 5 of the contract's consuming algorithm), or returned by a handler whose
// message turned out to be invalid. Its Reason goes into leveret-reason.
type MessageError struct {
	Reason string
	Err    error
}

func (e *MessageError) Error() string { return e.Err.Error() }
func (e *MessageError) Unwrap() error { return e.Err }

// ErrorType names the error the way leveret's Python errors are named.
func (e *MessageError) ErrorType() string {
	switch e.Reason {
	case ReasonTooLarge:
		return "MessageTooLarge"
	case ReasonInvalidContentType:
		return "InvalidContentType"
	case ReasonInvalidJSON:
		return "DecodeError"
	case ReasonUnknownType:
		return "UnknownMessageType"
	case ReasonUnknownVersion:
		return "UnknownVersion"
	case ReasonSchemaViolation:
		return "SchemaViolation"
	}
	return "MessageError"
}

func invalid(reason, format string, args ...interface{}) *MessageError {
	return &MessageError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// DeadLetter marks err as a permanent failure: the handler gives up on purpose
// and the message goes straight to the dead-letter queue (reason dead-letter)
// instead of down the retry path.
func DeadLetter(err error) error {
	if err == nil {
		err = errors.New("dead-lettered by the handler")
	}
	return &deadLetterError{err}
}

type deadLetterError struct{ err error }

func (e *deadLetterError) Error() string { return e.err.Error() }
func (e *deadLetterError) Unwrap() error { return e.err }

// TimeoutError is the transient failure of a handler that ran past its timeout.
type TimeoutError struct{ Timeout time.Duration }

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("handler exceeded its timeout of %s", e.Timeout)
}
func (e *TimeoutError) ErrorType() string { return "TimeoutError" }

// PanicError is the transient failure of a handler that panicked.
type PanicError struct {
	Value interface{}
	Stack []byte
}

func (e *PanicError) Error() string     { return fmt.Sprintf("handler panicked: %v", e.Value) }
func (e *PanicError) ErrorType() string { return "panic" }

// FailureOf classifies an error: a MessageError or a DeadLetter is permanent,
// anything else is transient (handler-error).
func FailureOf(err error) Failure {
	f := Failure{ErrorType: ErrorType(err), Message: err.Error()}
	var invalid *MessageError
	var dead *deadLetterError
	switch {
	case errors.As(err, &invalid):
		f.Permanent, f.Reason = true, invalid.Reason
	case errors.As(err, &dead):
		f.Permanent, f.Reason = true, ReasonDeadLetter
	default:
		f.Reason = ReasonHandlerError
		f.Traceback = traceback(err)
	}
	return f
}

// ErrorType names an error's kind for leveret-error-type: its ErrorType()
// method if it has one, else its Go type, looking through fmt.Errorf wrappers.
func ErrorType(err error) string {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if named, ok := e.(interface{ ErrorType() string }); ok {
			return named.ErrorType()
		}
		name := strings.TrimPrefix(fmt.Sprintf("%T", e), "*")
		switch name {
		case "fmt.wrapError", "leveret.deadLetterError":
			continue
		case "errors.errorString":
			return "error"
		}
		return name
	}
	return "error"
}

// traceback renders what Go knows of a failure's origin: the stack of a panic,
// or the chain of wrapped errors.
func traceback(err error) string {
	var p *PanicError
	if errors.As(err, &p) {
		return fmt.Sprintf("panic: %v\n\n%s", p.Value, p.Stack)
	}
	var b strings.Builder
	for e, depth := err, 0; e != nil; e, depth = errors.Unwrap(e), depth+1 {
		if depth > 0 {
			b.WriteString("\ncaused by: ")
		}
		fmt.Fprintf(&b, "%s: %s", ErrorType(e), e.Error())
	}
	return b.String()
}
