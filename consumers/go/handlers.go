package main

import (
	"context"

	"leveret-worker/leveret"
)

// register wires the handlers of this worker. To handle a new type, add a
// schemas/<type>.v<version>.json file, write a leveret.HandlerFunc and register
// it here with the versions it accepts.
func register(w *leveret.Worker, log *leveret.Logger) {
	w.Handle("demo.export", []int64{1, 2}, export(log))
	w.Handle(leveret.ConformanceType, []int64{1}, leveret.Conformance("go"))
}

// exportRequest is demo.export v1 and v2 (v2 added columns).
type exportRequest struct {
	UserID  int64    `json:"user_id"`
	Format  string   `json:"format"`
	Columns []string `json:"columns"`
}

// export handles demo.export: it logs the request. A real one would build the
// file; returning an error would retry it, leveret.DeadLetter(err) give up.
func export(log *leveret.Logger) leveret.HandlerFunc {
	return func(ctx context.Context, t *leveret.Task) error {
		var req exportRequest
		if err := t.Decode(&req); err != nil {
			return err
		}
		if req.Format == "" {
			req.Format = "csv"
		}
		log.Info("demo.export", "message_id", t.MessageID, "version", t.Version,
			"user_id", req.UserID, "format", req.Format, "columns", req.Columns, "attempt", t.Attempt)
		return nil
	}
}
