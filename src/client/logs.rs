//! A task's logs from the client's side: what its attempts wrote so far, or followed as it is
//! written until the task ends, on one stream ([`Request::Logs`]).

use futures::stream::BoxStream;
use futures::StreamExt;
use quinn::Connection;
use rgrid_core::frame::FrameReader;
use rgrid_core::log::LogEvent;
use rgrid_core::protocol::{Request, Response};
use rgrid_core::transport::{open_request, TransportError};
use rgrid_core::TaskId;

use super::{Client, ClientError, TaskRef};

/// Which of a task's logs to read (see [`Client::logs`]).
pub struct Logs<'a> {
    connection: &'a Connection,
    task: TaskId,
    attempt: Option<u32>,
}

impl Client {
    /// The logs of `task`: by default its latest attempt's, [`Logs::attempt`] for another;
    /// [`Logs::so_far`] reads what exists, [`Logs::follow`] follows it as it is written.
    pub fn logs(&self, task: &TaskRef) -> Logs<'_> {
        Logs {
            connection: &self.connection,
            task: task.id,
            attempt: None,
        }
    }
}

impl<'a> Logs<'a> {
    /// Only attempt `n` (the first is 1), e.g. one whose node died.
    pub fn attempt(mut self, n: u32) -> Self {
        self.attempt = Some(n);
        self
    }

    /// What the task has written so far; the last event is [`LogEvent::End`] (with the task's
    /// state when it has ended).
    pub fn so_far(self) -> BoxStream<'a, Result<LogEvent, ClientError>> {
        self.events(false)
    }

    /// What the task writes, as it writes it (moving on to a later attempt when one starts,
    /// unless an attempt was chosen), until [`LogEvent::End`] once the task has ended.
    pub fn follow(self) -> BoxStream<'a, Result<LogEvent, ClientError>> {
        self.events(true)
    }

    fn events(self, follow: bool) -> BoxStream<'a, Result<LogEvent, ClientError>> {
        /// Where the request is.
        enum State<'a> {
            Start(&'a Connection, Request),
            Reading(FrameReader<quinn::RecvStream, Response>),
            Done,
        }
        let request = Request::Logs {
            task: self.task,
            attempt: self.attempt,
            follow,
        };
        futures::stream::unfold(State::Start(self.connection, request), |state| async move {
            let mut recv = match state {
                State::Start(connection, request) => {
                    match open_request(connection, &request).await {
                        Ok(mut stream) => {
                            let _ = stream.send.get_mut().finish();
                            stream.recv
                        }
                        Err(err) => return Some((Err(err.into()), State::Done)),
                    }
                }
                State::Reading(recv) => recv,
                State::Done => return None,
            };
            let failed = match recv.next().await {
                Ok(Some(Response::Log(event @ LogEvent::End { .. }))) => {
                    return Some((Ok(event), State::Done))
                }
                Ok(Some(Response::Log(event))) => return Some((Ok(event), State::Reading(recv))),
                Ok(Some(Response::Error(e))) => ClientError::Refused(e),
                Ok(Some(other)) => ClientError::Unexpected(format!("{other:?}")),
                Ok(None) => ClientError::Unexpected("the log ended without its end".into()),
                Err(err) => TransportError::from(err).into(),
            };
            Some((Err(failed), State::Done))
        })
        .boxed()
    }
}
