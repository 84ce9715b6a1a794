package main

import (
	"context"
	"fmt"
	"time"

	"leveret-worker/leveret"
)

// register wires the handlers of this worker. To handle a new type, add a
// schemas/<type>.v<version>.json file, write a leveret.HandlerFunc and register
// it here with the versions it accepts.
func register(w *leveret.Worker, log *leveret.Logger) {
	w.Handle("demo.export", []int64{1, 2}, export(log), leveret.Tracked())
	w.Handle(leveret.ConformanceType, []int64{1}, leveret.Conformance("go"))
}

// exportRequest is demo.export v1 and v2 (v2 added columns).
type exportRequest struct {
	UserID  int64    `json:"user_id"`
	Format  string   `json:"format"`
	Columns []string `json:"columns"`
}

// export handles demo.export, tracked: it pretends to write the file in two
// parts, reporting progress after each, logs the request and reports where the
// file is. Returning an error would retry it, leveret.DeadLetter(err) give up.
func export(log *leveret.Logger) leveret.HandlerFunc {
	return func(ctx context.Context, t *leveret.Task) error {
		var req exportRequest
		if err := t.Decode(&req); err != nil {
			return err
		}
		if req.Format == "" {
			req.Format = "csv"
		}
		for part := 1; part <= 2; part++ {
			select {
			case <-time.After(25 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			t.Progress(ctx, float64(part*50), fmt.Sprintf("wrote part %d of 2", part))
		}
		t.Result = fmt.Sprintf("exports/%s.%s", t.MessageID, req.Format)
		log.Info("demo.export", "message_id", t.MessageID, "version", t.Version,
			"user_id", req.UserID, "format", req.Format, "columns", req.Columns, "attempt", t.Attempt)
		return nil
	}
}
