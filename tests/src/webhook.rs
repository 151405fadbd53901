//! A webhook receiver on 127.0.0.1 for the notification tests: it records
//! every request (path, the `X-Vigil-*` headers, the body and the status
//! it answered) and answers each with the next status of a queue, then
//! with a status that can be changed while it runs. Plain HTTP, or HTTPS
//! with a given acceptor; or (`hang`) it accepts and never answers.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering::SeqCst},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;

use crate::WAIT;

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub delivery: String,
    pub timestamp: String,
    pub signature: String,
    pub event: String,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Got {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the receiver answers.
#[derive(Debug)]
struct Answers {
    queue: Mutex<VecDeque<u16>>,
    then: AtomicU16,
}

#[derive(Debug)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Answers>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers each request with the next status of `answers`, then 200.
    pub async fn start(
        answers: &[u16],
        hang: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}/hooks/in"),
            None => format!("http://127.0.0.1:{port}/hooks/in"),
        };
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let answers = Arc::new(Answers {
            queue: Mutex::new(answers.iter().copied().collect()),
            then: AtomicU16::new(200),
        });
        let task = tokio::spawn({
            let (got, answers) = (got.clone(), answers.clone());
            async move {
                let mut held = Vec::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    if hang {
                        // Read nothing, answer nothing, keep it open.
                        held.push(tcp);
                        continue;
                    }
                    let (got, answers, tls) = (got.clone(), answers.clone(), tls.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let (got, answers) = (got.clone(), answers.clone());
                            async move { record(req, &got, &answers).await }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            Some(tls) => {
                                let Ok(stream) = tls.accept(tcp).await else {
                                    return;
                                };
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = http.serve_connection(io, service).await;
                            }
                            None => {
                                let io = hyper_util::rt::TokioIo::new(tcp);
                                let _ = http.serve_connection(io, service).await;
                            }
                        }
                    });
                }
            }
        });
        Self {
            url,
            got,
            answers,
            task,
        }
    }

    /// From now on (once the queued answers are used up), answer `status`.
    pub fn answer(&self, status: u16) {
        self.answers.then.store(status, SeqCst);
    }

    /// Every request so far.
    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests came (bounded by [`WAIT`]).
    pub async fn until(&self, n: usize) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} requests of {n} came",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    req: hyper::Request<hyper::body::Incoming>,
    got: &Mutex<Vec<Got>>,
    answers: &Answers,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let g = Got {
        path: req.uri().path().to_owned(),
        delivery: header("x-vigil-delivery"),
        timestamp: header("x-vigil-timestamp"),
        signature: header("x-vigil-signature"),
        event: header("x-vigil-event"),
        body: Vec::new(),
        status: 0,
    };
    let body = req.into_body().collect().await?.to_bytes().to_vec();
    let status = answers
        .queue
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| answers.then.load(SeqCst));
    got.lock().unwrap().push(Got { body, status, ..g });
    Ok(hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap())
}
