// Command leveret-worker is leveret's Go worker: it consumes one work queue
// by docs/contract.md, with the handlers registered in handlers.go.
//
// Configuration comes from the environment:
//
//	LEVERET_URL       broker URL, or several comma-separated (default amqp://localhost:5672/)
//	LEVERET_QUEUE     the work queue (default leveret.demo.tasks)
//	LEVERET_SCHEMAS   the schemas/ directory (default: the repository's, found from this source file or the binary)
//	LEVERET_PREFETCH  unacknowledged deliveries, and so handlers, at once (default 8)
//	LEVERET_MAX_ATTEMPTS  the queue's max_attempts (optional): with it, a tracked job's
//	                  transient failure on the last attempt reports "failed", not "retrying"
//	LEVERET_HTTP_PORT serve GET /livez, /readyz and /metrics on this port (unset: no server)
//	LEVERET_HTTP_HOST the address to serve them on (default 127.0.0.1; 0.0.0.0 in a container)
//	LEVERET_STALL_AFTER  seconds messages may wait with none settled before the worker is unready (default 300)
//	LEVERET_CHECK_INTERVAL  seconds between passive declares of the queue (default 5)
//	LEVERET_HEALTH_FILE  a file touched at each check while the worker is live
//
// leveret-worker -health-url URL asks URL once and exits 0 on a 200, 1
// otherwise: the image's HEALTHCHECK, with no shell or curl in it.
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
	"time"

	"leveret-worker/leveret"
)

func main() {
	os.Exit(run())
}

func run() int {
	logger := leveret.NewLogger(os.Stderr)
	if probe, ok := healthURL(os.Args[1:]); ok {
		if err := leveret.CheckURL(probe, 4*time.Second); err != nil {
			fmt.Fprintln(os.Stderr, "leveret-worker: unhealthy:", err)
			return 1
		}
		return 0
	}
	cfg, err := leveret.ConfigFromEnv(os.Getenv)
	if err != nil {
		logger.Error("worker.config_invalid", "error", err)
		return 2
	}
	flag.StringVar(&cfg.Schemas, "schemas", cfg.Schemas, "the schemas/ directory (overrides LEVERET_SCHEMAS)")
	flag.DurationVar(&cfg.Grace, "grace", cfg.Grace, "how long in-flight handlers may run on after SIGTERM")
	flag.String("health-url", "", "GET this URL once and exit 0 on a 200, 1 otherwise (the image's health check)")
	flag.Parse()
	if cfg.Schemas == "" {
		cfg.Schemas = defaultSchemas()
	}

	w := leveret.New(cfg, logger)
	register(w, logger)
	if cfg.HTTPPort >= 0 {
		probes := leveret.Probes{Health: w.Health, Metrics: w.Metrics, Now: time.Now}
		ln, err := leveret.ListenProbes(cfg.HTTPHost, cfg.HTTPPort, probes)
		if err != nil {
			logger.Error("worker.config_invalid", "error", err)
			return 2
		}
		defer ln.Close()
		logger.Info("worker.probes_listening", "address", ln.Addr().String())
	}

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

// healthURL finds -health-url before the environment is read: the health
// check must not fail on a worker setting.
func healthURL(args []string) (string, bool) {
	for i, arg := range args {
		for _, name := range []string{"-health-url", "--health-url"} {
			if arg == name && i+1 < len(args) {
				return args[i+1], true
			}
			if len(arg) > len(name) && arg[:len(name)+1] == name+"=" {
				return arg[len(name)+1:], true
			}
		}
	}
	return "", false
}

func isDir(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.IsDir()
}
