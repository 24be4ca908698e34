//! A TCP proxy on loopback, for tests where the network between a client and the server fails:
//! it forwards each connection to the target, can cut every connection it carries (both ends
//! see their connection end, as when a load balancer restarts), and can hold new connections
//! (accepted, not forwarded) until released.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    target: SocketAddr,
    /// Both sockets of every forwarded connection, to cut them.
    open: Mutex<Vec<TcpStream>>,
    held: Mutex<bool>,
    released: Condvar,
    stop: AtomicBool,
}

impl Proxy {
    /// A proxy to `target` on a free loopback port.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            open: Mutex::new(Vec::new()),
            held: Mutex::new(false),
            released: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let s = s.clone();
                thread::spawn(move || s.forward(client));
            }
        });
        Self { addr, shared }
    }

    /// Ends every connection the proxy carries now.
    pub fn cut(&self) {
        for s in self.shared.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Holds new connections (`true`) until released (`false`).
    pub fn hold(&self, on: bool) {
        *self.shared.held.lock().unwrap() = on;
        self.shared.released.notify_all();
    }
}

impl Shared {
    fn forward(&self, client: TcpStream) {
        let mut held = self.held.lock().unwrap();
        while *held && !self.stop.load(SeqCst) {
            held = self.released.wait(held).unwrap();
        }
        drop(held);
        let Ok(server) = TcpStream::connect(self.target) else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut open = self.open.lock().unwrap();
            open.push(client.try_clone().unwrap());
            open.push(server.try_clone().unwrap());
        }
        let pipe = |mut from: TcpStream, mut to: TcpStream| {
            thread::spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            })
        };
        pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
        pipe(server, client);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        self.hold(false);
        self.cut();
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect(self.addr);
    }
}
