//! The one place where core errors become Ruby exceptions. The classes are
//! defined in Ruby (lib/locking/errors.rb) and looked up here by name.

use magnus::{prelude::*, ExceptionClass, RClass, Ruby};

/// A core error on its way to Ruby.
pub struct RubyError(pub locking_core::Error);

impl From<locking_core::Error> for RubyError {
    fn from(error: locking_core::Error) -> Self {
        RubyError(error)
    }
}

impl From<RubyError> for magnus::Error {
    fn from(RubyError(error): RubyError) -> magnus::Error {
        use locking_core::Error as E;
        // SAFETY: errors are only converted inside methods Ruby called, on a
        // Ruby thread holding the GVL.
        let ruby = unsafe { Ruby::get_unchecked() };
        let class = match &error {
            E::Connection { .. } | E::Interrupted { .. } => locking_class(&ruby, "ConnectionError"),
            E::Timeout { .. } => locking_class(&ruby, "TimeoutError"),
            E::Command { .. } => locking_class(&ruby, "CommandError"),
            E::NotReplicated { .. } => locking_class(&ruby, "NotReplicatedError"),
            E::InvalidArgument(_) => ruby.exception_arg_error(),
            E::Phase(_) => locking_class(&ruby, "PhaseError"),
            E::Internal(_) => locking_class(&ruby, "Error"),
        };
        magnus::Error::new(class, error.to_string())
    }
}

/// `Locking::<name>`, falling back to RuntimeError if Ruby has not defined it.
pub fn locking_class(ruby: &Ruby, name: &str) -> ExceptionClass {
    ruby.class_object()
        .const_get::<_, RClass>("Locking")
        .and_then(|locking| locking.const_get::<_, ExceptionClass>(name))
        .unwrap_or_else(|_| ruby.exception_runtime_error())
}

/// A panic caught at the boundary: reported, never propagated into Ruby.
pub fn panic_error(ruby: &Ruby, message: &str) -> magnus::Error {
    magnus::Error::new(
        locking_class(ruby, "Error"),
        format!("internal error (a bug in locking, please report it): {message}"),
    )
}
