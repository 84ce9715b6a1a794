// Command leveret-worker is leveret's Go worker: it consumes one work queue
// by docs/contract.md, with the handlers registered in handlers.go.
//
// Configuration comes from the environment:
//
//	LEVERET_URL       broker URL, or several comma-separated (default amqp://guest:guest@localhost:5672/)
//	LEVERET_QUEUE     the work queue (default leveret.demo.tasks)
//	LEVERET_SCHEMAS   the schemas/ directory (default: the repository's, found from this source file or the binary)
//	LEVERET_PREFETCH  unacknowledged deliveries, and so handlers, at once (default 8)
//	LEVERET_MAX_ATTEMPTS  the queue's max_attempts (optional): with it, a tracked job's
//	                  transient failure on the last attempt reports "failed", not "retrying"
//
// SIGTERM or SIGINT stops it gracefully: the consumer is cancelled, in-flight
// handlers finish and are settled, and it exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"

	"leveret-worker/leveret"
)

func main() {
	os.Exit(run())
}

func run() int {
	logger := leveret.NewLogger(os.Stderr)
	cfg, err := leveret.ConfigFromEnv(os.Getenv)
	if err != nil {
		logger.Error("worker.config_invalid", "error", err)
		return 2
	}
	flag.StringVar(&cfg.Schemas, "schemas", cfg.Schemas, "the schemas/ directory (overrides LEVERET_SCHEMAS)")
	flag.DurationVar(&cfg.Grace, "grace", cfg.Grace, "how long in-flight handlers may run on after SIGTERM")
	flag.Parse()
	if cfg.Schemas == "" {
		cfg.Schemas = defaultSchemas()
	}

	w := leveret.New(cfg, logger)
	register(w, logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := w.Run(ctx); err != nil {
		logger.Error("worker.failed", "queue", cfg.Queue, "error", err)
		return 1
	}
	return 0
}

// defaultSchemas finds the repository's schemas/: ../../schemas from this
// source file when the binary was built from a checkout, else the nearest
// schemas/ above the binary.
func defaultSchemas() string {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dir := filepath.Join(filepath.Dir(file), "..", "..", "schemas")
		if isDir(dir) {
			return filepath.Clean(dir)
		}
	}
	if exe, err := os.Executable(); err == nil {
		for dir := filepath.Dir(exe); ; {
			if candidate := filepath.Join(dir, "schemas"); isDir(candidate) {
				return candidate
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	fmt.Fprintln(os.Stderr, "leveret-worker: no schemas/ directory found; set LEVERET_SCHEMAS or -schemas")
	return "schemas"
}

func isDir(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.IsDir()
}
