//! Poison-tolerant locking, for the state every adapter and the runtime guard with std locks.
//!
//! A panic while a lock is held poisons it; the state behind the locks of this workspace is
//! kept consistent at every await-free step (a map insert, a counter), so the next user takes
//! it as it is rather than panicking in turn: one panicking handler must not take the
//! consumer down with it.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use messaging_core::sync::lock;
//!
//! let shared = Arc::new(Mutex::new(0));
//! let s = shared.clone();
//! let _ = std::thread::spawn(move || {
//!     let _held = s.lock().unwrap();
//!     panic!("poisons the mutex");
//! })
//! .join();
//! *lock(&shared) += 1;
//! assert_eq!(*lock(&shared), 1);
//! ```

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking it as it is if a panic poisoned it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-locks `l`, taking it as it is if a panic poisoned it.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `l`, taking it as it is if a panic poisoned it.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
