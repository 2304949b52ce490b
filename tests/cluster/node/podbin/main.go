// podbin: a tiny static program for the real node of tests/cluster.
//
//	podbin pause                   the pod sandbox's process: waits for SIGTERM/SIGINT, reaps orphans
//	podbin serve ADDR [READY_AFTER] an HTTP server: GET / answers the pod's hostname, GET /ready
//	                               answers 503 until READY_AFTER (a Go duration) has passed, then 200
//	podbin get URL [TIMEOUT]       GETs URL (retrying until TIMEOUT), prints the body
//	podbin post URL BODY [TIMEOUT] POSTs BODY (JSON) to URL, retrying a refused connection until
//	                               TIMEOUT (one request may take the rest of it: a held request
//	                               waits), prints {"status": S, "seconds": T, "body": "..."}
//	podbin lookup NAME             resolves NAME with the pod's /etc/resolv.conf, prints the addresses
//	podbin write PATH TEXT         writes TEXT to PATH
//
// Every command but pause and serve also writes what it printed to /dev/termination-log when it
// exists, so a test reads the result from the pod's status.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: podbin pause|serve|get|post|lookup|write ...")
	}
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "pause":
		pause()
	case "serve":
		need(args, 1)
		after := time.Duration(0)
		if len(args) > 1 {
			after = duration(args[1])
		}
		serve(args[0], after)
	case "get":
		need(args, 1)
		timeout := 30 * time.Second
		if len(args) > 1 {
			timeout = duration(args[1])
		}
		report(get(args[0], timeout))
	case "post":
		need(args, 2)
		timeout := 30 * time.Second
		if len(args) > 2 {
			timeout = duration(args[2])
		}
		report(post(args[0], args[1], timeout))
	case "lookup":
		need(args, 1)
		addrs, err := net.DefaultResolver.LookupHost(context.Background(), args[0])
		if err != nil {
			fail(err.Error())
		}
		report(strings.Join(addrs, " "))
	case "write":
		need(args, 2)
		if err := os.WriteFile(args[0], []byte(args[1]), 0o644); err != nil {
			fail(err.Error())
		}
		report("wrote " + args[0])
	default:
		fail("unknown command " + cmd)
	}
}

func pause() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			return
		}
		for { // reap every exited child
			var status syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}

func serve(addr string, readyAfter time.Duration) {
	start := time.Now()
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, host) })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		if time.Since(start) < readyAfter {
			http.Error(w, "not ready yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ready")
	})
	server := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		<-signals
		server.Close()
	}()
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fail(err.Error())
	}
}

func get(url string, timeout time.Duration) string {
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, readErr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if readErr == nil && resp.StatusCode == http.StatusOK {
				return string(body)
			}
			err = fmt.Errorf("%s: status %d, %v", url, resp.StatusCode, readErr)
		}
		if time.Now().After(deadline) {
			fail(err.Error())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func post(url, body string, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		start := time.Now()
		client := &http.Client{Timeout: time.Until(deadline)}
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
		if err == nil {
			answer, readErr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if readErr != nil {
				fail(fmt.Sprintf("%s: reading the answer: %v", url, readErr))
			}
			out, _ := json.Marshal(map[string]any{"status": resp.StatusCode,
				"seconds": time.Since(start).Seconds(), "body": string(answer)})
			return string(out)
		}
		if time.Now().After(deadline) {
			fail(err.Error())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func report(text string) {
	fmt.Println(text)
	_ = os.WriteFile("/dev/termination-log", []byte(text), 0o644)
}

func need(args []string, n int) {
	if len(args) < n {
		fail(fmt.Sprintf("expected %d argument(s), got %d", n, len(args)))
	}
}

func duration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		fail(err.Error())
	}
	return d
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "podbin:", msg)
	_ = os.WriteFile("/dev/termination-log", []byte(msg), 0o644)
	os.Exit(1)
}
