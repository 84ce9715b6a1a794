package leveret

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Logger writes one JSON object per line: ts, level and event first, then the
// fields in the order given.
type Logger struct {
	mu    sync.Mutex
	out   io.Writer
	debug bool
}

// NewLogger logs to out (the worker's stderr); debug lines only with
// LEVERET_LOG_LEVEL=debug.
func NewLogger(out io.Writer) *Logger {
	return &Logger{out: out, debug: strings.EqualFold(os.Getenv("LEVERET_LOG_LEVEL"), "debug")}
}

// Debug logs an event only when debug lines are on.
func (l *Logger) Debug(event string, kv ...interface{}) {
	if l != nil && l.debug {
		l.log("debug", event, kv)
	}
}

// Info, Warn and Error log an event with key, value pairs.
func (l *Logger) Info(event string, kv ...interface{})  { l.log("info", event, kv) }
func (l *Logger) Warn(event string, kv ...interface{})  { l.log("warning", event, kv) }
func (l *Logger) Error(event string, kv ...interface{}) { l.log("error", event, kv) }

func (l *Logger) log(level, event string, kv []interface{}) {
	if l == nil {
		return
	}
	var b bytes.Buffer
	b.WriteString(`{"ts":`)
	writeJSON(&b, Timestamp(time.Now()))
	b.WriteString(`,"level":`)
	writeJSON(&b, level)
	b.WriteString(`,"event":`)
	writeJSON(&b, event)
	for i := 0; i+1 < len(kv); i += 2 {
		key, ok := kv[i].(string)
		if !ok {
			continue
		}
		b.WriteByte(',')
		writeJSON(&b, key)
		b.WriteByte(':')
		value := kv[i+1]
		if err, ok := value.(error); ok {
			value = err.Error()
		}
		writeJSON(&b, value)
	}
	b.WriteString("}\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.out.Write(b.Bytes())
}

func writeJSON(b *bytes.Buffer, v interface{}) {
	data, err := json.Marshal(v)
	if err != nil {
		data, _ = json.Marshal(err.Error())
	}
	b.Write(data)
}
