//! WASI's blocking calls held to the plugin call's deadline.
//!
//! The epoch that enforces a plugin's time limit interrupts wasm code only: a plugin that sleeps
//! (`poll` on a clock), or blocks on a stream, inside a host call would hold its route's stage
//! thread for as long as it asked, and an `init` that does so would hold every later reload. So
//! `wasi:io/poll` and `wasi:io/streams` are linked over wasmtime-wasi's own, as the same calls
//! with a deadline: the end of the call's time limit. Past it, the call traps and the plugin is
//! faulted like one that ran past its limit in wasm. Non-blocking calls go straight through.

use std::future::Future;
use std::time::Instant;

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    Host as AsyncStreams, HostInputStream as AsyncInput, HostOutputStream as AsyncOutput,
};

/// A blocking WASI call that was still waiting when the call's time limit ran out.
#[derive(Debug, thiserror::Error)]
#[error("a blocking WASI call (a sleep, a poll, a blocking read or write) ran past the time limit")]
pub struct BlockedPastDeadline;

/// The resource table of a plugin's store, with the deadline of the call under way.
pub struct Deadlined<'a> {
    pub table: &'a mut ResourceTable,
    pub deadline: Instant,
}

/// Links [`Deadlined`] as the host of `wasi:io/poll` and `wasi:io/streams`.
pub struct HasDeadline;

impl HasData for HasDeadline {
    type Data<'a> = Deadlined<'a>;
}

/// Runs a blocking operation until it completes or the deadline passes.
fn until<T>(deadline: Instant, operation: impl Future<Output = T>) -> wasmtime::Result<T> {
    let deadline = tokio::time::Instant::from_std(deadline);
    in_tokio(async { tokio::time::timeout_at(deadline, operation).await })
        .map_err(|_| wasmtime::Error::new(BlockedPastDeadline))
}

/// [`until`] for stream operations, whose traps travel inside their [`StreamError`].
fn stream_until<T>(
    deadline: Instant,
    operation: impl Future<Output = StreamResult<T>>,
) -> StreamResult<T> {
    until(deadline, operation).unwrap_or_else(|trap| Err(StreamError::Trap(trap)))
}

impl poll::Host for Deadlined<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let table = &mut *self.table;
        until(self.deadline, async_poll::Host::poll(table, pollables))?
    }
}

impl poll::HostPollable for Deadlined<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        let table = &mut *self.table;
        until(
            self.deadline,
            async_poll::HostPollable::ready(table, pollable),
        )?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let table = &mut *self.table;
        until(
            self.deadline,
            async_poll::HostPollable::block(table, pollable),
        )?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

impl streams::Host for Deadlined<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(AsyncStreams::convert_stream_error(self.table, err)?.into())
    }
}

impl streams::HostOutputStream for Deadlined<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        let table = &mut *self.table;
        until(self.deadline, AsyncOutput::drop(table, stream))?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        AsyncOutput::check_write(self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        AsyncOutput::write(self.table, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let table = &mut *self.table;
        stream_until(
            self.deadline,
            AsyncOutput::blocking_write_and_flush(table, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let table = &mut *self.table;
        stream_until(
            self.deadline,
            AsyncOutput::blocking_write_zeroes_and_flush(table, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncOutput::subscribe(self.table, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        AsyncOutput::write_zeroes(self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        AsyncOutput::flush(self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        let table = &mut *self.table;
        stream_until(self.deadline, AsyncOutput::blocking_flush(table, stream))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOutput::splice(self.table, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let table = &mut *self.table;
        stream_until(
            self.deadline,
            AsyncOutput::blocking_splice(table, dst, src, len),
        )
    }
}

impl streams::HostInputStream for Deadlined<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        let table = &mut *self.table;
        until(self.deadline, AsyncInput::drop(table, stream))?
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncInput::read(self.table, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        let table = &mut *self.table;
        stream_until(self.deadline, AsyncInput::blocking_read(table, stream, len))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncInput::skip(self.table, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        let table = &mut *self.table;
        stream_until(self.deadline, AsyncInput::blocking_skip(table, stream, len))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncInput::subscribe(self.table, stream)
    }
}
