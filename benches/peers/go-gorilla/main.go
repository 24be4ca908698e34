// Go gorilla/websocket fan-out hub, same interface as takhin-monitor: our own copy of the
// classic gorilla "chat" hub pattern (hub goroutine with register/unregister/broadcast channels,
// per-client buffered send channel of 256, readPump/writePump goroutines, ping every 54 s,
// pong deadline 60 s, write deadline 10 s, max inbound message 512 KiB).
//
// Why a fair peer: gorilla/websocket is the most used Go WebSocket library and this hub is the
// pattern its own example teaches, i.e. what most Go fan-out servers look like; `-prepared` adds
// the library's own encode-once optimisation (PreparedMessage), the same idea our hub uses.
//
//   WS subscribe:  ws://ADDR/api/monitoring/ws
//   Publish:       POST http://ADDR/publish (body = message, one text frame to every client)
//                  or any message sent by any WS client (broadcast to all, sender included)
//   GET /healthz   {"ok","subscribers","published","dropped_slow","prepared"}
//   -prepared      build one websocket.PreparedMessage per broadcast and send it with
//                  WritePreparedMessage (frame bytes computed once, shared by all clients)
//   -coalesce      chat-example behaviour: writePump packs queued messages into one frame,
//                  newline-separated (off by default: one message = one frame)
// Slow client policy (as in the pattern): if a client's send channel (256) is full, the hub
// closes it and drops the client (counted in dropped_slow).
// Deviations from the chat example: CheckOrigin accepts any origin; one message = one frame;
// the message is not trimmed.
// Build (Debian golang-go + golang-github-gorilla-websocket-dev, no module proxy): install.sh go, i.e.
//   GO111MODULE=off GOPATH=/usr/share/gocode go build -o hub main.go
package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	writeWait      = 10 * time.Second
	pongWait       = 60 * time.Second
	pingPeriod     = (pongWait * 9) / 10 // 54 s
	maxMessageSize = 512 * 1024
	sendBuffer     = 256
)

var (
	addr     = flag.String("addr", "127.0.0.1:18084", "listen address")
	wsPath   = flag.String("path", "/api/monitoring/ws", "WebSocket path")
	prepared = flag.Bool("prepared", false, "broadcast a websocket.PreparedMessage")
	coalesce = flag.Bool("coalesce", false, "pack queued messages into one frame (chat example behaviour)")
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	// Deviation from the chat example: accept any Origin, so pages served from another
	// localhost port (browser tests) can connect.
	CheckOrigin: func(r *http.Request) bool { return true },
}

// outMsg is what travels on a client's send channel: raw bytes, or a prepared message.
type outMsg struct {
	data []byte
	pm   *websocket.PreparedMessage
}

type Client struct {
	hub  *Hub
	conn *websocket.Conn
	send chan outMsg
}

type Hub struct {
	clients    map[*Client]bool
	broadcast  chan []byte
	register   chan *Client
	unregister chan *Client
	count      atomic.Int64
	published  atomic.Int64
	dropped    atomic.Int64
}

func newHub() *Hub {
	return &Hub{
		clients:    make(map[*Client]bool),
		broadcast:  make(chan []byte),
		register:   make(chan *Client),
		unregister: make(chan *Client),
	}
}

func (h *Hub) run() {
	for {
		select {
		case c := <-h.register:
			h.clients[c] = true
		case c := <-h.unregister:
			if _, ok := h.clients[c]; ok {
				delete(h.clients, c)
				close(c.send)
			}
		case m := <-h.broadcast:
			h.published.Add(1)
			out := outMsg{data: m}
			if *prepared {
				pm, err := websocket.NewPreparedMessage(websocket.TextMessage, m)
				if err != nil {
					log.Printf("prepare: %v", err)
					continue
				}
				out = outMsg{pm: pm}
			}
			for c := range h.clients {
				select {
				case c.send <- out:
				default: // slow client: drop it
					close(c.send)
					delete(h.clients, c)
					h.dropped.Add(1)
				}
			}
		}
		h.count.Store(int64(len(h.clients)))
	}
}

// readPump pumps messages from the connection to the hub (any client message is broadcast).
func (c *Client) readPump() {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
	for {
		_, message, err := c.conn.ReadMessage()
		if err != nil {
			break
		}
		c.hub.broadcast <- message
	}
}

// writePump pumps messages from the hub to the connection, and sends pings.
func (c *Client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case m, ok := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok { // hub closed the channel
				c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if m.pm != nil {
				if err := c.conn.WritePreparedMessage(m.pm); err != nil {
					return
				}
				continue
			}
			w, err := c.conn.NextWriter(websocket.TextMessage)
			if err != nil {
				return
			}
			w.Write(m.data)
			if *coalesce { // chat example: add queued messages to the current frame
				n := len(c.send)
				for i := 0; i < n; i++ {
					w.Write([]byte{'\n'})
					w.Write((<-c.send).data)
				}
			}
			if err := w.Close(); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func serveWs(hub *Hub, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &Client{hub: hub, conn: conn, send: make(chan outMsg, sendBuffer)}
	hub.register <- c
	go c.writePump()
	go c.readPump()
}

func main() {
	flag.Parse()
	hub := newHub()
	go hub.run()
	mux := http.NewServeMux()
	mux.HandleFunc(*wsPath, func(w http.ResponseWriter, r *http.Request) { serveWs(hub, w, r) })
	mux.HandleFunc("/publish", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxMessageSize))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		hub.broadcast <- body
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]int64{"subscribers": hub.count.Load()})
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"ok": true, "subscribers": hub.count.Load(),
			"published": hub.published.Load(), "dropped_slow": hub.dropped.Load(), "prepared": *prepared})
	})
	log.Printf("go-gorilla hub (prepared=%v coalesce=%v) on ws://%s%s, POST /publish", *prepared, *coalesce, *addr, *wsPath)
	log.Fatal(http.ListenAndServe(*addr, mux))
}
