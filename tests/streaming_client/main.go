// streaming-client drives cri-shim's streaming server the way crictl v1.37.0 does: the same
// client-go executors and dialers (pkg/common/streaming.go in cri-tools), so a test that passes
// with it exercises exactly what `crictl exec/attach/port-forward` send.
//
//	streaming-client exec -url URL [-transport spdy|websocket] [-stdin] [-tty] [-resize 80x24,100x30]
//	streaming-client portforward -url URL [-transport spdy|websocket] -ports 0:8080[,0:9090]
//
// exec (also used for attach: same wire protocol) copies this process's stdin/stdout/stderr and
// exits with the remote command's exit code. portforward prints "READY <local>:<remote> ..." once
// the listeners are up and runs until stdin closes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
	utilexec "k8s.io/client-go/util/exec"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: streaming-client exec|portforward [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "exec":
		err = runExec(os.Args[2:])
	case "portforward":
		err = runPortForward(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err == nil {
		return
	}
	var exitErr utilexec.CodeExitError
	if errors.As(err, &exitErr) {
		os.Exit(exitErr.ExitStatus())
	}
	fmt.Fprintln(os.Stderr, "streaming-client:", err)
	os.Exit(100)
}

// sizeQueue replays the sizes given with -resize, one every 100 ms, then reports no more.
type sizeQueue struct {
	sizes []remotecommand.TerminalSize
	next  int
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	if q.next >= len(q.sizes) {
		return nil
	}
	if q.next > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	s := q.sizes[q.next]
	q.next++
	return &s
}

func parseSizes(text string) ([]remotecommand.TerminalSize, error) {
	var out []remotecommand.TerminalSize
	for _, item := range strings.Split(text, ",") {
		if item == "" {
			continue
		}
		w, h, ok := strings.Cut(item, "x")
		if !ok {
			return nil, fmt.Errorf("bad size %q (want WxH)", item)
		}
		wi, err1 := strconv.ParseUint(w, 10, 16)
		hi, err2 := strconv.ParseUint(h, 10, 16)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad size %q", item)
		}
		out = append(out, remotecommand.TerminalSize{Width: uint16(wi), Height: uint16(hi)})
	}
	return out, nil
}

func executor(transport string, u *url.URL) (remotecommand.Executor, error) {
	config := &rest.Config{TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	switch transport {
	case "spdy":
		return remotecommand.NewSPDYExecutor(config, "POST", u)
	case "websocket":
		return remotecommand.NewWebSocketExecutor(config, "GET", u.String())
	}
	return nil, fmt.Errorf("unknown transport %q", transport)
}

func runExec(args []string) error {
	fs := flag.NewFlagSet("exec", flag.ExitOnError)
	rawURL := fs.String("url", "", "streaming URL")
	transport := fs.String("transport", "spdy", "spdy or websocket")
	stdin := fs.Bool("stdin", false, "send this process's stdin")
	tty := fs.Bool("tty", false, "terminal mode (no stderr stream)")
	stderr := fs.Bool("stderr", true, "request stderr (ignored with -tty)")
	resize := fs.String("resize", "", "terminal sizes to send, e.g. 80x24,100x30")
	_ = fs.Parse(args)
	u, err := url.Parse(*rawURL)
	if err != nil {
		return err
	}
	exec, err := executor(*transport, u)
	if err != nil {
		return err
	}
	opts := remotecommand.StreamOptions{Stdout: os.Stdout, Tty: *tty}
	if *stdin {
		opts.Stdin = os.Stdin
	}
	if *stderr && !*tty {
		opts.Stderr = os.Stderr
	}
	if *resize != "" {
		sizes, err := parseSizes(*resize)
		if err != nil {
			return err
		}
		opts.TerminalSizeQueue = &sizeQueue{sizes: sizes}
	}
	return exec.StreamWithContext(context.Background(), opts)
}

func dialer(transport string, u *url.URL) (httpstream.Dialer, error) {
	config := &rest.Config{TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	switch transport {
	case "spdy":
		tr, upgrader, err := spdy.RoundTripperFor(config)
		if err != nil {
			return nil, err
		}
		return spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: tr}, "POST", u), nil
	case "websocket":
		return portforward.NewSPDYOverWebsocketDialerForStreaming(u, config)
	}
	return nil, fmt.Errorf("unknown transport %q", transport)
}

func runPortForward(args []string) error {
	fs := flag.NewFlagSet("portforward", flag.ExitOnError)
	rawURL := fs.String("url", "", "streaming URL")
	transport := fs.String("transport", "spdy", "spdy or websocket")
	ports := fs.String("ports", "", "LOCAL:REMOTE[,LOCAL:REMOTE]; LOCAL 0 picks a free port")
	_ = fs.Parse(args)
	u, err := url.Parse(*rawURL)
	if err != nil {
		return err
	}
	d, err := dialer(*transport, u)
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	ready := make(chan struct{})
	go func() {
		// The test ends the session by closing our stdin.
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	pf, err := portforward.NewOnAddressesForStreaming(d, []string{"127.0.0.1"},
		strings.Split(*ports, ","), stop, ready, io.Discard, os.Stderr)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- pf.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		return err
	}
	got, err := pf.GetPorts()
	if err != nil {
		return err
	}
	var parts []string
	for _, p := range got {
		parts = append(parts, fmt.Sprintf("%d:%d", p.Local, p.Remote))
	}
	fmt.Println("READY " + strings.Join(parts, " "))
	return <-errc
}
