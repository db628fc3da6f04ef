//! The writer: one `INSERT` of the next id per transaction into the workload table on the current primary,
//! recording every id PostgreSQL acknowledged (the commit returned). An insert that failed, or whose answer never
//! came, is not acknowledged; the next insert uses a fresh id either way, so ids increase and never repeat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{connect, find_primary, Target, WorkloadError, CALL_TIMEOUT, RETRY_PAUSE};

/// State shared between the writer thread and its handle.
#[derive(Debug, Default)]
struct Shared {
    acked: Mutex<Vec<i64>>,
    last_error: Mutex<Option<String>>,
    node: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// A running writer (a thread); [`Writer::stop`] ends it and hands back the acknowledged ids.
#[derive(Debug)]
pub struct Writer {
    shared: Arc<Shared>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing to `target`, one insert every `pace` (as fast as the primary answers when zero).
    pub fn start(target: Target, pace: Duration) -> Writer {
        let shared = Arc::new(Shared::default());
        let handle = {
            let shared = shared.clone();
            thread::spawn(move || run(&target, pace, &shared))
        };
        Writer { shared, handle: Some(handle) }
    }

    /// How many inserts were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        lock(&self.shared.acked).len()
    }

    /// The member the writer last wrote to.
    pub fn node(&self) -> Option<String> {
        lock(&self.shared.node).clone()
    }

    /// The last error the writer retried after, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Stops writing (after the insert in flight) and returns the acknowledged ids, in order.
    pub fn stop(&mut self) -> Vec<i64> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        lock(&self.shared.acked).clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(target: &Target, pace: Duration, shared: &Shared) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            *lock(&shared.last_error) = Some(format!("cannot start the writer's runtime: {e}"));
            return;
        }
    };
    rt.block_on(write_loop(target, pace, shared));
}

async fn write_loop(target: &Target, pace: Duration, shared: &Shared) {
    let sql = format!("INSERT INTO public.{} (id) VALUES ($1)", target.table);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut id: i64 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let c = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => match connect_primary(target, shared).await {
                Ok(c) => c,
                Err(e) => {
                    *lock(&shared.last_error) = Some(e.to_string());
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            },
        };
        id += 1;
        let id32 = i32::try_from(id).unwrap_or(i32::MAX);
        match tokio::time::timeout(CALL_TIMEOUT, c.execute(sql.as_str(), &[&id32])).await {
            Ok(Ok(_)) => {
                lock(&shared.acked).push(id);
                client = Some(c);
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            // Read-only (a demoted or recovering node), gone, or too slow: ask for the primary again.
            Ok(Err(source)) => {
                let e = WorkloadError::Postgres { what: format!("INSERT of id {id}"), source };
                *lock(&shared.last_error) = Some(e.to_string());
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_) => {
                *lock(&shared.last_error) = Some(WorkloadError::Timeout(format!("INSERT of id {id}")).to_string());
            }
        }
    }
}

/// A connection to the primary the REST API names, in the workload's database.
async fn connect_primary(target: &Target, shared: &Shared) -> Result<tokio_postgres::Client, WorkloadError> {
    let t = target.clone();
    let (name, port) = tokio::task::spawn_blocking(move || find_primary(&t))
        .await
        .map_err(|e| WorkloadError::NoPrimary(format!("lookup task: {e}")))??;
    let client = connect(port, &target.database).await?;
    *lock(&shared.node) = Some(name);
    Ok(client)
}
