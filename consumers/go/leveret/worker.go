package leveret

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TopologyMissingError means a queue or exchange the worker needs does not
// exist. The worker never declares: `leveret topology apply` does.
type TopologyMissingError struct{ Missing []string }

func (e *TopologyMissingError) Error() string {
	return fmt.Sprintf("missing on the broker: %s; run `leveret topology apply`", strings.Join(e.Missing, ", "))
}

// AccessRefusedError means the broker refused the credentials or a permission.
type AccessRefusedError struct{ Err error }

func (e *AccessRefusedError) Error() string { return "access refused: " + e.Err.Error() }
func (e *AccessRefusedError) Unwrap() error { return e.Err }

// Worker consumes one work queue and settles every delivery by the contract.
type Worker struct {
	cfg      Config
	log      *Logger
	router   router
	identity string // <host>:<pid>
	inflight sync.WaitGroup
	// Health is what the probes ask; Metrics what /metrics shows.
	Health  *Health
	Metrics *Metrics
	// reported is the readiness reason last logged: log changes, not every check.
	reported string
}

// New returns a worker for cfg that logs to log.
func New(cfg Config, log *Logger) *Worker {
	host, _ := os.Hostname()
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = DefaultStallAfter
	}
	if cfg.RepublishPatience <= 0 {
		cfg.RepublishPatience = DefaultRepublishPatience
	}
	return &Worker{
		cfg: cfg,
		log: log,
		router: router{
			queue:    cfg.Queue,
			maxSize:  cfg.MaxSize,
			schemas:  NewSchemas(cfg.Schemas),
			handlers: map[string]*handler{},
		},
		identity: fmt.Sprintf("%s:%d", host, os.Getpid()),
		Health:   NewHealth([]string{cfg.Queue}, cfg.StallAfter, DefaultLiveGrace, time.Now()),
		Metrics:  NewMetrics(),
	}
}

// HandlerOption changes how a handler is run.
type HandlerOption func(*handler)

// Tracked makes a handler's tasks report their status to leveret.status:
// started, Task.Progress, then succeeded (with Task.Result), retrying or failed.
func Tracked() HandlerOption { return func(h *handler) { h.tracked = true } }

// Handle registers fn for the given versions of a message type. Every other
// version of the type is dead-lettered as unknown-version, every other type as
// unknown-type.
func (w *Worker) Handle(msgType string, versions []int64, fn HandlerFunc, options ...HandlerOption) {
	h := &handler{fn: fn, versions: map[int64]bool{}}
	for _, v := range versions {
		h.versions[v] = true
	}
	for _, option := range options {
		option(h)
	}
	w.router.handlers[msgType] = h
}

// Run consumes until ctx is cancelled, then stops taking deliveries, lets the
// in-flight handlers finish and settle (within the grace period), closes the
// connection and returns nil. A dropped connection or channel is reconnected
// with backoff. It returns an error when the configuration is wrong, the
// topology is missing, access is refused, or the broker cannot be reached at
// start within the start timeout.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.router.check(); err != nil {
		return err
	}
	// Readiness is logged and the health file touched while live, connected
	// or not: a reconnect within the grace keeps the container.
	tick := time.NewTicker(w.cfg.CheckInterval)
	defer tick.Stop()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				w.healthTick()
			}
		}
	}()
	deadline := time.Now().Add(w.cfg.StartTimeout)
	started := false
	delay := 500 * time.Millisecond
	for {
		consumed, err := w.session(ctx, started)
		started = started || consumed
		if err == nil {
			w.log.Info("worker.stopped", "queue", w.cfg.Queue)
			return nil
		}
		var missing *TopologyMissingError
		var refused *AccessRefusedError
		if errors.As(err, &missing) || errors.As(err, &refused) {
			return err
		}
		if !started && time.Now().After(deadline) {
			return fmt.Errorf("broker unavailable at %s: %s", w.cfg.Broker(), w.cfg.redact(err.Error()))
		}
		if consumed {
			delay = 500 * time.Millisecond
		}
		event := "worker.connection_lost"
		if !started {
			event = "worker.broker_unavailable"
		}
		w.log.Warn(event, "error", w.cfg.redact(err.Error()), "retry_in_ms", delay.Milliseconds())
		select {
		case <-ctx.Done():
			w.finish()
			w.log.Info("worker.stopped", "queue", w.cfg.Queue)
			return nil
		case <-time.After(delay):
		}
		if delay *= 2; delay > 10*time.Second {
			delay = 10 * time.Second
		}
	}
}

// session is one connection's life: check the topology, open the channels,
// consume until ctx is done (nil) or the connection or a channel drops (an
// error). consumed tells whether the consumer got registered.
func (w *Worker) session(ctx context.Context, resumed bool) (consumed bool, err error) {
	conn, err := w.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))

	if err := w.verify(conn); err != nil {
		return false, err
	}
	// Status goes to leveret.status only if it exists: publishing to a missing
	// exchange would close the confirm channel that copies are settled on.
	canReport, err := w.exists(conn, "exchange", StatusExchange)
	if err != nil {
		return false, err
	}
	if tracked := w.router.tracked(); !canReport && len(tracked) > 0 {
		w.log.Warn("status.exchange_missing", "exchange", StatusExchange, "tracked", tracked,
			"hint", "status is not reported")
	}
	// The confirm channel renews itself after a nack: pubClosed tells only of
	// its current channel, not of one it retired.
	pub, err := newConfirmer(conn, w.log)
	if err != nil {
		return false, err
	}
	pubClosed := pub.Lost()
	check, err := conn.Channel()
	if err != nil {
		return false, err
	}
	consume, err := conn.Channel()
	if err != nil {
		return false, err
	}
	consumeClosed := consume.NotifyClose(make(chan *amqp.Error, 1))
	if err := consume.Qos(w.cfg.Prefetch, 0, false); err != nil {
		return false, err
	}
	tag := Truncate(fmt.Sprintf("leveret-go %s@%s", w.cfg.Queue, w.identity), 255, false) // a shortstr
	deliveries, err := consume.Consume(w.cfg.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return false, classify(err)
	}
	w.Health.ConnectionUp(time.Now())
	w.Metrics.SetConnected(true, resumed)
	defer func() {
		w.Health.ConnectionDown(time.Now())
		w.Metrics.SetConnected(false, false)
	}()
	if err := w.waitForConsumer(check); err != nil {
		return false, err
	}
	event := "worker.consuming"
	if resumed {
		event = "worker.resumed"
	}
	w.log.Info(event, "queue", w.cfg.Queue, "prefetch", w.cfg.Prefetch,
		"broker", w.cfg.Broker(), "schemas", w.cfg.Schemas)

	ticker := time.NewTicker(w.cfg.CheckInterval)
	defer ticker.Stop()
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return true, errors.New("the broker cancelled the consumer or closed its channel")
			}
			w.inflight.Add(1)
			w.Metrics.Received(w.cfg.Queue)
			go func() {
				defer w.inflight.Done()
				w.process(pub, d, canReport)
			}()
		case e := <-connClosed:
			return true, closedError("connection", e)
		case e := <-consumeClosed:
			return true, closedError("consuming channel", e)
		case e := <-pubClosed:
			return true, closedError("publishing channel", e)
		case <-ticker.C:
			if err := w.checkConsumer(check); err != nil {
				w.log.Error("worker.consumers_lost", "queue", w.cfg.Queue, "error", err)
				return true, err
			}
		case <-ctx.Done():
			w.Health.Draining(time.Now())
			w.drain(consume, tag, deliveries)
			return true, nil
		}
	}
}

func (w *Worker) dial() (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("leveret-go " + w.cfg.Queue + "@" + w.identity)
	var last error
	for _, u := range w.cfg.URLs {
		conn, err := amqp.DialConfig(u, amqp.Config{
			Heartbeat:  10 * time.Second,
			Locale:     "en_US",
			Properties: props,
		})
		if err == nil {
			return conn, nil
		}
		if errors.Is(err, amqp.ErrCredentials) || errors.Is(err, amqp.ErrSASL) {
			return nil, &AccessRefusedError{fmt.Errorf("the broker at %s refused the credentials", Redact(u))}
		}
		last = fmt.Errorf("%s: %s", Redact(u), w.cfg.redact(err.Error()))
	}
	return nil, last
}

// verify checks with passive declares, each on a channel of its own (a 404
// closes the channel), that Q, Q.retry, Q.dead and Q.dlq exist.
func (w *Worker) verify(conn *amqp.Connection) error {
	q := w.cfg.Queue
	checks := []struct {
		kind, name string
	}{
		{"queue", q}, {"exchange", RetryExchange(q)}, {"exchange", DeadExchange(q)}, {"queue", DeadLetterQueue(q)},
	}
	var missing []string
	for _, c := range checks {
		ok, err := w.exists(conn, c.kind, c.name)
		if err != nil {
			return err
		}
		if !ok {
			missing = append(missing, fmt.Sprintf("%s %q", c.kind, c.name))
		}
	}
	if len(missing) > 0 {
		return &TopologyMissingError{Missing: missing}
	}
	return nil
}

// exists is a passive declare of a queue or an exchange, on a channel of its own.
func (w *Worker) exists(conn *amqp.Connection, kind, name string) (bool, error) {
	ch, err := conn.Channel()
	if err != nil {
		return false, err
	}
	if kind == "queue" {
		_, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
	} else {
		err = ch.ExchangeDeclarePassive(name, "", true, false, false, false, nil)
	}
	var amqpErr *amqp.Error
	switch {
	case err == nil:
		_ = ch.Close()
		return true, nil
	case errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound:
		return false, nil
	default:
		return false, classify(err)
	}
}

// waitForConsumer asks the broker, rather than trusting the client, that the
// queue has a consumer: a reconnect that leaves none is a silent failure.
func (w *Worker) waitForConsumer(check *amqp.Channel) error {
	var err error
	for i := 0; i < 20; i++ {
		if err = w.checkConsumer(check); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func (w *Worker) checkConsumer(check *amqp.Channel) error {
	q, err := check.QueueDeclarePassive(w.cfg.Queue, true, false, false, false, nil)
	if err != nil {
		return classify(err)
	}
	w.Health.Checked(map[string]int{w.cfg.Queue: q.Consumers}, map[string]int{w.cfg.Queue: q.Messages}, time.Now())
	w.Metrics.Checked(w.cfg.Queue, q.Consumers, q.Messages)
	if q.Consumers == 0 {
		return fmt.Errorf("no consumer registered on %q", w.cfg.Queue)
	}
	return nil
}

// drain cancels the consumer, hands back deliveries that were sent before the
// cancel took effect (they were never attempted), and waits for the handlers in
// flight to finish and settle, at most for the grace period.
func (w *Worker) drain(consume *amqp.Channel, tag string, deliveries <-chan amqp.Delivery) {
	if err := consume.Cancel(tag, false); err != nil {
		w.log.Warn("worker.cancel_failed", "error", err)
	} else {
		for d := range deliveries {
			_ = d.Reject(true)
		}
	}
	w.finish()
}

func (w *Worker) finish() {
	done := make(chan struct{})
	go func() {
		w.inflight.Wait()
		close(done)
	}()
	w.log.Info("worker.draining", "queue", w.cfg.Queue, "grace_s", w.cfg.Grace.Seconds())
	select {
	case <-done:
	case <-time.After(w.cfg.Grace):
		w.log.Warn("worker.grace_expired", "queue", w.cfg.Queue)
	}
}

// process checks, handles and settles one delivery, and logs its outcome. A
// tracked task, or a batch member (even an invalid one), reports its status
// when leveret.status exists.
func (w *Worker) process(pub *confirmer, d amqp.Delivery, canReport bool) {
	start := time.Now()
	_, member := BatchID(d.Headers)
	if member && !canReport {
		w.log.Error("status.batch_member_unreported", "message_id", d.MessageId,
			"hint", "no "+StatusExchange+" exchange: apply a tracked app's topology")
	}
	tracked := member && canReport
	// Read once: every message sent for this delivery continues one trace.
	trace := TraceOf(d.Headers)
	status := w.statusOf(pub, &d, trace)
	bg := context.Background()
	task, fn, err := w.router.resolve(&d)
	if err == nil {
		task.trace, task.TraceID = trace, trace.TraceID
		task.publish = pub.Publish
		if tracked = tracked || (w.router.handlers[d.Type].tracked && canReport); tracked {
			task.status = status
			status(bg, JobStatus{State: "started"})
		}
		err = w.call(fn, task)
		if err == nil && tracked {
			// Before the ack: a crash in between repeats the task, never
			// leaves a finished job looking unfinished.
			status(bg, JobStatus{State: "succeeded", Result: task.Result})
		}
	}
	var failure *Failure
	if err != nil {
		f := FailureOf(err)
		failure = &f
	}
	outcome := w.settle(pub, &d, failure)
	// After the copy was confirmed and the delivery settled. The worker does
	// not know the retry delays: no next_attempt_at. A transient failure on the
	// last attempt (which the broker sends on to Q.dlq) reads "failed" when
	// MaxAttempts is known, else "retrying".
	if tracked && failure != nil {
		message := Truncate(failure.Message, MaxErrorMessage, false)
		switch outcome {
		case "retry_scheduled":
			if w.cfg.MaxAttempts > 0 && RetryCount(d.Headers)+1 >= int64(w.cfg.MaxAttempts) {
				status(bg, JobStatus{State: "failed", Reason: failure.Reason, Error: message})
			} else {
				status(bg, JobStatus{State: "retrying", Error: message})
			}
		case "dead_lettered":
			status(bg, JobStatus{State: "failed", Reason: failure.Reason, Error: message})
		}
	}
	w.Health.Settled(time.Now())
	w.Metrics.Settled(w.cfg.Queue, d.Type, outcome, time.Since(start))
	w.report(&d, trace, outcome, failure, time.Since(start))
}

// healthTick logs a change of readiness and touches the health file while live.
func (w *Worker) healthTick() {
	now := time.Now()
	ready, live := w.Health.Readiness(now), w.Health.Liveness(now)
	w.Metrics.SetReady(ready.OK)
	if ready.Reason != w.reported {
		switch {
		case ready.OK:
			w.log.Info("worker.ready", "queue", w.cfg.Queue)
		case ready.Reason != "the worker is shutting down":
			w.log.Warn("worker.unready", "queue", w.cfg.Queue, "reason", ready.Reason, "live", live.OK)
		}
		w.reported = ready.Reason
	}
	if w.cfg.HealthFile == "" || !live.OK {
		return
	}
	stamp := strconv.FormatFloat(float64(now.UnixNano())/1e9, 'f', 3, 64)
	if err := os.WriteFile(w.cfg.HealthFile, []byte(stamp), 0o644); err != nil {
		w.log.Warn("worker.health_file_failed", "path", w.cfg.HealthFile, "error", err)
	}
}

// call runs a handler with the timeout; a panic is a transient failure.
func (w *Worker) call(fn HandlerFunc, task *Task) error {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.HandlerTimeout)
	defer cancel()
	result := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				result <- &PanicError{Value: r, Stack: debug.Stack()}
			}
		}()
		result <- fn(ctx, task)
	}()
	select {
	case err := <-result:
		if err != nil && ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			return &TimeoutError{Timeout: w.cfg.HandlerTimeout}
		}
		return err
	case <-ctx.Done():
		return &TimeoutError{Timeout: w.cfg.HandlerTimeout}
	}
}

// Pauses between the sendings of a nacked copy: from republishPause, doubling,
// at most republishPauseMax.
const (
	republishPause    = 50 * time.Millisecond
	republishPauseMax = 2 * time.Second
)

// settle acks a processed delivery; for a failed one it publishes the copy to
// Q.retry or Q.dead, waits for the confirm and acks, or rejects without
// requeue when the copy is not confirmed (Q's dead-letter exchange keeps it).
// A nacked copy is sent again for up to RepublishPatience first, the delivery
// unacked meanwhile.
func (w *Worker) settle(pub *confirmer, d *amqp.Delivery, f *Failure) string {
	if f == nil {
		if err := d.Ack(false); err != nil {
			w.log.Warn("message.settle_failed", "message_id", d.MessageId, "error", err)
			return "redelivery_pending"
		}
		return "processed"
	}
	now := time.Now()
	queue := w.cfg.Queue
	headers := CopyHeaders(d.Headers, *f, queue, queue+"@"+w.identity, d.Exchange, d.RoutingKey, now)
	exchange := f.Exchange(queue)
	began := time.Now()
	err := w.republish(pub, d, exchange, CopyPublishing(d, headers, now), began.Add(w.cfg.RepublishPatience))
	if err == nil {
		if err := d.Ack(false); err != nil {
			w.log.Warn("message.settle_failed", "message_id", d.MessageId, "error", err)
			return "redelivery_pending"
		}
		if f.Permanent {
			return "dead_lettered"
		}
		return "retry_scheduled"
	}
	w.log.Error("message.republish_failed", "message_id", d.MessageId, "exchange", exchange, "error", err,
		"refused_for", roundSeconds(time.Since(began)))
	if err := d.Reject(false); err != nil {
		w.log.Warn("message.settle_failed", "message_id", d.MessageId, "error", err)
		return "redelivery_pending"
	}
	return "dead_lettered"
}

// republish publishes a failed delivery's copy, sending it again while the
// broker nacks it: after a pause (doubling), on a new channel (a nack renews
// the confirmer's). The first nack is logged, once per delivery. It returns
// ErrNacked when still nacked at deadline; a return or a closed channel at once.
func (w *Worker) republish(pub *confirmer, d *amqp.Delivery, exchange string, msg amqp.Publishing, deadline time.Time) error {
	pause := republishPause
	for refusals := 0; ; refusals++ {
		err := pub.Publish(context.Background(), exchange, "", msg)
		if !errors.Is(err, ErrNacked) {
			return err
		}
		now := time.Now()
		if now.Add(pause).After(deadline) {
			return err
		}
		if refusals == 0 { // once a delivery: the outcome's line says how it ended
			w.log.Warn("message.republish_refused", "message_id", d.MessageId, "exchange", exchange,
				"sending_again_for", roundSeconds(deadline.Sub(now)))
		}
		time.Sleep(pause)
		if pause *= 2; pause > republishPauseMax {
			pause = republishPauseMax
		}
	}
}

// roundSeconds is d in seconds, to the millisecond.
func roundSeconds(d time.Duration) float64 {
	return float64(d.Milliseconds()) / 1000
}

// report logs the one line of a settled delivery.
func (w *Worker) report(d *amqp.Delivery, trace Trace, outcome string, f *Failure, took time.Duration) {
	kv := []interface{}{
		"message_id", d.MessageId,
		"trace_id", trace.TraceID,
		"type", d.Type,
		"version", nil,
		"queue", w.cfg.Queue,
		"attempt", RetryCount(d.Headers) + 1,
		"outcome", outcome,
		"duration_ms", float64(took.Microseconds()) / 1000,
	}
	if v, ok := Version(d.Headers); ok {
		kv[7] = v
	}
	if f != nil {
		kv = append(kv, "reason", f.Reason, "error", Truncate(f.Message, MaxErrorMessage, false))
	}
	switch outcome {
	case "processed":
		w.log.Info("message."+outcome, kv...)
	case "dead_lettered":
		w.log.Error("message."+outcome, kv...)
	default:
		w.log.Warn("message."+outcome, kv...)
	}
}

// classify turns a 403 into an AccessRefusedError and a 404 into a
// TopologyMissingError; other errors are returned as they are.
func classify(err error) error {
	var amqpErr *amqp.Error
	if errors.As(err, &amqpErr) {
		switch amqpErr.Code {
		case amqp.AccessRefused:
			return &AccessRefusedError{err}
		case amqp.NotFound:
			return &TopologyMissingError{Missing: []string{amqpErr.Reason}}
		}
	}
	return err
}

func closedError(what string, e *amqp.Error) error {
	if e == nil {
		return fmt.Errorf("the %s closed", what)
	}
	return fmt.Errorf("the %s closed: %w", what, e)
}
