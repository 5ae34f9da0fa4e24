//! Headless Chromium driven over the DevTools protocol: open a page, evaluate JavaScript in it,
//! take a screenshot.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Chromium process, killed on drop (with its profile directory).
pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    profile: std::path::PathBuf,
}

/// One open page (a DevTools session attached to a tab).
pub struct Page {
    session: String,
}

impl Browser {
    /// Chromium offering plain loopback addresses as its ICE candidates.
    pub async fn launch() -> Browser {
        Browser::start(false, false).await
    }

    /// Chromium with a fake camera and microphone (a moving test picture and a beep), granted
    /// to pages without asking.
    pub async fn launch_with_fake_devices() -> Browser {
        Browser::start(false, true).await
    }

    /// Chromium as it ships: its local addresses hidden behind mDNS names, so a server can only
    /// learn where it is from the checks it sends.
    pub async fn launch_hiding_local_ips() -> Browser {
        Browser::start(true, false).await
    }

    async fn start(hide_local_ips: bool, fake_devices: bool) -> Browser {
        static LAUNCHED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "wasmcast-chromium-{}-{}",
            std::process::id(),
            LAUNCHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .args((!hide_local_ips).then_some("--disable-features=WebRtcHideLocalIpsWithMdns"))
            .args(
                fake_devices
                    .then_some([
                        "--use-fake-device-for-media-stream",
                        "--use-fake-ui-for-media-stream",
                    ])
                    .into_iter()
                    .flatten(),
            )
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium (scripts/install-test-deps.sh installs it)");
        let stderr = child.stderr.take().expect("piped stderr");
        let (found, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = found.send(line[at..].trim().to_owned());
                }
            }
        });
        let url = url
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to DevTools");
        Browser {
            child,
            socket,
            next_id: 0,
            profile,
        }
    }

    /// Sends one DevTools command and waits for its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_call(session, method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    /// Like [`Browser::call`], with DevTools' error as an `Err`.
    async fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools connection open")
                .expect("DevTools message");
            let Message::Text(text) = reply else { continue };
            let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if value["id"] == id {
                return match value.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(value["result"].clone()),
                };
            }
        }
    }

    /// Opens `url` in a new tab and waits until it has loaded.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        };
        // Until the page has loaded, what is evaluated may run in the blank page before it and be
        // destroyed with it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let loaded = self
                .try_call(
                    Some(&page.session),
                    "Runtime.evaluate",
                    json!({
                        "expression": "location.href !== 'about:blank' && document.readyState === 'complete'",
                        "returnByValue": true
                    }),
                )
                .await;
            if matches!(loaded, Ok(ref result) if result["result"]["value"] == true) {
                return page;
            }
            assert!(Instant::now() < deadline, "{url} did not load: {loaded:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of `expression` in `page` (awaited if it is a promise).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let result = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(thrown) = result.get("exceptionDetails") {
            eprintln!("evaluating in Chromium threw: {thrown}");
        }
        result["result"]["value"].clone()
    }

    /// A PNG screenshot of `page`.
    pub async fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        use base64::Engine;
        let result = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Mean brightness (0–255) of the RGB pixels of a PNG inside `region` (x, y, width, height).
pub fn mean_brightness(png_bytes: &[u8], region: (u32, u32, u32, u32)) -> f64 {
    mean_over_pixels(png_bytes, region, |rgb| {
        rgb.iter().map(|&v| f64::from(v)).sum::<f64>() / 3.0
    })
}

/// Mean saturation (max − min of R, G, B; 0 for gray) of a PNG's pixels inside `region`.
pub fn mean_saturation(png_bytes: &[u8], region: (u32, u32, u32, u32)) -> f64 {
    mean_over_pixels(png_bytes, region, |rgb| {
        let max = rgb.iter().max().copied().unwrap_or(0);
        let min = rgb.iter().min().copied().unwrap_or(0);
        f64::from(max - min)
    })
}

/// The mean of `measure` over the RGB pixels of a PNG inside `region`.
fn mean_over_pixels(
    png_bytes: &[u8],
    region: (u32, u32, u32, u32),
    measure: impl Fn(&[u8]) -> f64,
) -> f64 {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("PNG pixels");
    let channels = info.color_type.samples();
    let (x0, y0, w, h) = region;
    let (mut sum, mut count) = (0.0, 0u64);
    for y in y0..(y0 + h).min(info.height) {
        for x in x0..(x0 + w).min(info.width) {
            let at = (y as usize * info.width as usize + x as usize) * channels;
            sum += measure(&pixels[at..at + 3]);
            count += 1;
        }
    }
    sum / count.max(1) as f64
}
