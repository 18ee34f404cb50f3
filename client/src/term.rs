//! The terminal and signals, for `tim watch`: single-key input without
//! echo, restored however tim exits, and SIGINT/SIGTERM turned into events.

use std::io::Read;
use std::sync::atomic::{AtomicI32, Ordering};

/// While alive, the terminal delivers keys one at a time without echo.
/// Output processing and signal keys (Ctrl-C) stay as they were.
pub struct KeyMode {
    saved: libc::termios,
}

impl KeyMode {
    /// `None` when stdin is not a terminal (then there are no keys).
    pub fn enable() -> Option<KeyMode> {
        // SAFETY: termios calls on fd 0 with a struct we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut keys = saved;
            keys.c_lflag &= !(libc::ICANON | libc::ECHO);
            keys.c_cc[libc::VMIN] = 1;
            keys.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &keys) != 0 {
                return None;
            }
            Some(KeyMode { saved })
        }
    }
}

impl Drop for KeyMode {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// Reads stdin byte by byte on a thread, calling `sink` with each; stops at
/// end of input or when `sink` returns false.
pub fn read_keys(mut sink: impl FnMut(u8) -> bool + Send + 'static) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut byte = [0u8; 1];
        while let Ok(1) = stdin.read(&mut byte) {
            if !sink(byte[0]) {
                break;
            }
        }
    });
}

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe outlives us.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Calls `sink` (on a thread) for every SIGINT or SIGTERM the process gets,
/// instead of dying: the caller stops its children and restores the
/// terminal first.
pub fn on_interrupt(mut sink: impl FnMut(i32) + Send + 'static) -> std::io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into an array we own; sigaction with a handler that
    // only calls write(2).
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    let read_fd = fds[0];
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: reading from the pipe we created.
            let n = unsafe { libc::read(read_fd, byte.as_mut_ptr().cast(), 1) };
            if n == 1 {
                sink(i32::from(byte[0]));
            } else if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            } else {
                break;
            }
        }
    });
    Ok(())
}
