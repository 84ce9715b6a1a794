// The Go amqp091 client as a baseline: what the broker can do for a compiled
// client with the same guarantees (persistent messages, publisher confirms,
// manual ack after the handler). Built offline by build.sh; driven by
// bench/systems/go_.py through the environment:
//
//	bench-go publish   BENCH_N messages from BENCH_CALLERS goroutines (a channel
//	                   each, one connection), at most BENCH_WINDOW unconfirmed
//	                   per caller (1: wait for each confirm). Prints JSON.
//	bench-go consume   consume BENCH_QUEUE with BENCH_PREFETCH, decode the JSON
//	                   body, record "ok <id> <start> <end> <sent>" in
//	                   BENCH_RECORDS/<pid>.rec, ack; until SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func env(name string, fallback int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return fallback
}

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

type payload struct {
	ID     string  `json:"id"`
	N      int     `json:"n"`
	Sent   float64 `json:"sent"`
	UserID int     `json:"user_id"`
	Format string  `json:"format"`
	Pad    string  `json:"pad"`
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "bench-go: "+format+"\n", args...)
	os.Exit(1)
}

// caller publishes its share of the ids with at most window confirms outstanding.
func caller(ch *amqp.Channel, queue string, items []payload, window int) (nacked int, err error) {
	slots := make(chan *amqp.DeferredConfirmation, window)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for dc := range slots {
			if !dc.Wait() {
				mu.Lock()
				nacked++
				mu.Unlock()
			}
		}
	}()
	send := func(p payload) error {
		p.Sent = now()
		body, _ := json.Marshal(p)
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", queue, true, false,
			amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: body})
		if err != nil {
			return err
		}
		slots <- dc
		return nil
	}
	for _, p := range items {
		if err = send(p); err != nil {
			break
		}
	}
	close(slots)
	wg.Wait()
	return nacked, err
}

func publish() {
	url, queue, tag := os.Getenv("BENCH_URL"), os.Getenv("BENCH_QUEUE"), os.Getenv("BENCH_TAG")
	n, callers, window := env("BENCH_N", 1000), env("BENCH_CALLERS", 1), env("BENCH_WINDOW", 1)
	padding, _ := strconv.Atoi(os.Getenv("BENCH_PAD"))
	pad := strings.Repeat("x", padding)
	conn, err := amqp.Dial(url)
	if err != nil {
		die("dial: %v", err)
	}
	defer conn.Close()
	lanes := make([][]payload, callers)
	for k := 0; k < n; k++ {
		p := payload{ID: fmt.Sprintf("%s-%07d", tag, k), N: k, UserID: k + 1, Format: "csv", Pad: pad}
		lanes[k%callers] = append(lanes[k%callers], p)
	}
	chans := make([]*amqp.Channel, callers)
	returned := 0
	var rmu sync.Mutex
	for i := range chans {
		ch, err := conn.Channel()
		if err != nil {
			die("channel: %v", err)
		}
		if err := ch.Confirm(false); err != nil {
			die("confirm: %v", err)
		}
		returns := ch.NotifyReturn(make(chan amqp.Return, 16))
		go func() {
			for range returns {
				rmu.Lock()
				returned++
				rmu.Unlock()
			}
		}()
		// One warm-up message per caller before the clock starts.
		warm := payload{ID: fmt.Sprintf("warm-%d-%d", os.Getpid(), i), Format: "csv", UserID: 1}
		if _, err := caller(ch, queue, []payload{warm}, 1); err != nil {
			die("warm-up: %v", err)
		}
		chans[i] = ch
	}
	var wg sync.WaitGroup
	nacked := make([]int, callers)
	errs := make([]error, callers)
	start := time.Now()
	for i := range chans {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			nacked[i], errs[i] = caller(chans[i], queue, lanes[i], window)
		}(i)
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	total := 0
	for i, e := range errs {
		if e != nil {
			die("publish: %v", e)
		}
		total += nacked[i]
	}
	out, _ := json.Marshal(map[string]interface{}{"seconds": seconds, "nacked": total, "returned": returned})
	fmt.Println(string(out))
}

func consume() {
	url, queue := os.Getenv("BENCH_URL"), os.Getenv("BENCH_QUEUE")
	prefetch := env("BENCH_PREFETCH", 8)
	path := filepath.Join(os.Getenv("BENCH_RECORDS"), fmt.Sprintf("%d.rec", os.Getpid()))
	rec, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		die("records: %v", err)
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		die("dial: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		die("channel: %v", err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		die("qos: %v", err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		die("consume: %v", err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case <-stop:
			ch.Close()
			conn.Close()
			return
		case d, ok := <-deliveries:
			if !ok {
				die("the broker closed the consumer")
			}
			start := now()
			var p payload
			if err := json.Unmarshal(d.Body, &p); err != nil {
				d.Reject(false)
				continue
			}
			line := fmt.Sprintf("ok %s %.6f %.6f %.6f\n", p.ID, start, now(), p.Sent)
			if _, err := rec.Write([]byte(line)); err != nil {
				die("record: %v", err)
			}
			if err := d.Ack(false); err != nil {
				die("ack: %v", err)
			}
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		die("usage: bench-go publish|consume")
	}
	switch os.Args[1] {
	case "publish":
		publish()
	case "consume":
		consume()
	default:
		die("unknown mode %q", os.Args[1])
	}
}
