package leveret

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults of the environment variables the worker reads.
const (
	DefaultURL      = "amqp://localhost:5672/" // no credentials: RabbitMQ's default user
	DefaultQueue    = "leveret.demo.tasks"
	DefaultPrefetch = 8
	// DefaultRepublishPatience is how long a nacked retry or dead-letter copy
	// is sent again before the delivery is dead-lettered.
	DefaultRepublishPatience = 30 * time.Second
)

// Config is what a worker needs to run.
type Config struct {
	URLs           []string      // broker URLs, tried in turn (a cluster's nodes)
	Queue          string        // the work queue Q
	Schemas        string        // the schemas/ directory
	Prefetch       int           // basic.qos prefetch count; also the handlers running at once
	MaxSize        int           // largest body accepted, in bytes
	HandlerTimeout time.Duration // below the broker's consumer_timeout (30 min by default)
	Grace          time.Duration // how long in-flight handlers may take to finish on shutdown
	StartTimeout   time.Duration // how long to keep trying to reach the broker at start
	CheckInterval  time.Duration // between checks that the queue still has our consumer
	// MaxAttempts is the queue's max_attempts, 0 when unknown. When known, a
	// tracked job's transient failure on the last attempt reports "failed"
	// rather than "retrying" (its copy still goes to Q.retry).
	MaxAttempts int
	// HTTPPort serves /livez, /readyz and /metrics when set (-1: no server;
	// 0: any free port) on HTTPHost (127.0.0.1 unless set).
	HTTPHost   string
	HTTPPort   int
	StallAfter time.Duration // messages waiting this long with none settled: unready
	HealthFile string        // touched at each check while the worker is live ("" for none)
	// RepublishPatience is how long a copy the broker nacks is sent again
	// (each time on a new channel) before the delivery is rejected to Q's
	// dead-letter exchange; DefaultRepublishPatience when 0.
	RepublishPatience time.Duration
}

// ConfigFromEnv reads LEVERET_URL (comma-separated for several nodes),
// LEVERET_QUEUE, LEVERET_SCHEMAS, LEVERET_PREFETCH, LEVERET_MAX_ATTEMPTS
// (optional), LEVERET_HTTP_PORT and LEVERET_HTTP_HOST, LEVERET_STALL_AFTER,
// LEVERET_CHECK_INTERVAL and LEVERET_REPUBLISH_PATIENCE (seconds), and
// LEVERET_HEALTH_FILE through getenv (os.Getenv), with the defaults for
// anything unset.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{
		Queue:          DefaultQueue,
		Schemas:        getenv("LEVERET_SCHEMAS"),
		Prefetch:       DefaultPrefetch,
		MaxSize:        DefaultMaxSize,
		HandlerTimeout: 25 * time.Minute,
		Grace:          30 * time.Second,
		StartTimeout:   30 * time.Second,
		CheckInterval:  5 * time.Second,
		HTTPHost:       "127.0.0.1",
		HTTPPort:       -1,
		StallAfter:     DefaultStallAfter,
		HealthFile:     getenv("LEVERET_HEALTH_FILE"),
	}
	raw := getenv("LEVERET_URL")
	if strings.TrimSpace(raw) == "" {
		raw = DefaultURL
	}
	for _, u := range strings.Split(raw, ",") {
		if u = strings.TrimSpace(u); u == "" {
			continue
		}
		parsed, err := url.Parse(u)
		if err != nil || (parsed.Scheme != "amqp" && parsed.Scheme != "amqps") {
			return cfg, fmt.Errorf("LEVERET_URL: %s is not an amqp:// or amqps:// URL", Redact(u))
		}
		cfg.URLs = append(cfg.URLs, u)
	}
	if len(cfg.URLs) == 0 {
		return cfg, fmt.Errorf("LEVERET_URL: no broker URL given")
	}
	if q := strings.TrimSpace(getenv("LEVERET_QUEUE")); q != "" {
		cfg.Queue = q
	}
	if p := strings.TrimSpace(getenv("LEVERET_PREFETCH")); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return cfg, fmt.Errorf("LEVERET_PREFETCH: want an integer from 1 to 65535, got %q", p)
		}
		cfg.Prefetch = n
	}
	if m := strings.TrimSpace(getenv("LEVERET_MAX_ATTEMPTS")); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 1 {
			return cfg, fmt.Errorf("LEVERET_MAX_ATTEMPTS: want a positive integer, got %q", m)
		}
		cfg.MaxAttempts = n
	}
	if h := strings.TrimSpace(getenv("LEVERET_HTTP_HOST")); h != "" {
		cfg.HTTPHost = h
	}
	if p := strings.TrimSpace(getenv("LEVERET_HTTP_PORT")); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return cfg, fmt.Errorf("LEVERET_HTTP_PORT: want a port number from 0 to 65535, got %q", p)
		}
		cfg.HTTPPort = n
	}
	var err error
	if cfg.StallAfter, err = seconds(getenv, "LEVERET_STALL_AFTER", cfg.StallAfter); err != nil {
		return cfg, err
	}
	if cfg.CheckInterval, err = seconds(getenv, "LEVERET_CHECK_INTERVAL", cfg.CheckInterval); err != nil {
		return cfg, err
	}
	if cfg.RepublishPatience, err = seconds(getenv, "LEVERET_REPUBLISH_PATIENCE", DefaultRepublishPatience); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// seconds reads a positive number of seconds (1.5 is allowed).
func seconds(getenv func(string) string, name string, fallback time.Duration) (time.Duration, error) {
	raw := strings.TrimSpace(getenv(name))
	if raw == "" {
		return fallback, nil
	}
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil || !(f > 0) || f > 1e9 {
		return fallback, fmt.Errorf("%s: want a positive number of seconds, got %q", name, raw)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// Broker describes the broker URLs for logs, passwords replaced by ***.
func (c Config) Broker() string {
	out := make([]string, len(c.URLs))
	for i, u := range c.URLs {
		out[i] = Redact(u)
	}
	return strings.Join(out, ",")
}

var credentials = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@\s]*@`)

// Redact replaces the password of every URL in text with ***.
func Redact(text string) string {
	return credentials.ReplaceAllString(text, "$1:***@")
}

// redactor also hides the passwords themselves, wherever a client library
// might repeat one in an error message.
func (c Config) redact(text string) string {
	text = Redact(text)
	for _, raw := range c.URLs {
		u, err := url.Parse(raw)
		if err != nil || u.User == nil {
			continue
		}
		if pw, ok := u.User.Password(); ok && len(pw) >= 4 {
			text = strings.ReplaceAll(text, pw, "***")
			text = strings.ReplaceAll(text, url.QueryEscape(pw), "***")
		}
	}
	return text
}
