//! Telling a service manager what `ferry serve` is doing (systemd's `Type=notify`, see `sd_notify(3)`): ready once
//! every listener is bound, reloading during a SIGHUP, stopping at shutdown. Without `NOTIFY_SOCKET` in the
//! environment nothing is sent; a manager that cannot be told is logged, never fatal.

use sd_notify::NotifyState;

/// Every listener is bound and accepting.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// A reload (SIGHUP) has begun; [`ready`] ends it. systemd wants the monotonic time with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the monotonic clock for the service manager")
        }
    }
}

/// Shutting down: transfers may still be finishing.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

fn send(states: &[NotifyState]) {
    // One short datagram to a local socket that the manager drains at once.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
