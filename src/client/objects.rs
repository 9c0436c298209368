//! Objects from the client's side: uploads and downloads on streams of their own, in chunks (an
//! object never sits whole in memory), verified by the receiver; the head's listing.

use std::path::Path;

use rgrid_core::object::{
    Hasher, Incoming, ObjectPage, ObjectQuery, ObjectRef, CHUNK_BYTES, MAX_PAGE_OBJECTS,
};
use rgrid_core::protocol::{Request, Response};
use rgrid_core::transport::{open_request, put_object, PutError, TransportError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{Client, ClientError};

fn io_error(path: &Path, source: std::io::Error) -> ClientError {
    ClientError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Client {
    /// Uploads `bytes` as an object (stored once however often it is uploaded).
    pub async fn put_bytes(&self, bytes: impl AsRef<[u8]>) -> Result<ObjectRef, ClientError> {
        let bytes = bytes.as_ref();
        let object = ObjectRef::of(bytes);
        self.put_from(object, bytes).await
    }

    /// Uploads a file as an object: read twice in chunks, to name it and to send it (a file
    /// that changes in between is refused by the head).
    pub async fn put_file(&self, path: impl AsRef<Path>) -> Result<ObjectRef, ClientError> {
        let path = path.as_ref();
        let open = || async {
            tokio::fs::File::open(path)
                .await
                .map_err(|e| io_error(path, e))
        };
        let mut file = BufReader::with_capacity(CHUNK_BYTES, open().await?);
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = file.read(&mut buf).await.map_err(|e| io_error(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let object = hasher.finish();
        self.put_from(object, open().await?).await
    }

    async fn put_from(
        &self,
        object: ObjectRef,
        source: impl AsyncRead + Unpin,
    ) -> Result<ObjectRef, ClientError> {
        match put_object(&self.connection, object, source).await {
            Ok(()) => Ok(object),
            Err(PutError::Refused(e)) => Err(ClientError::Refused(e)),
            Err(PutError::Transport(e)) => Err(e.into()),
            Err(PutError::Unexpected(e)) => Err(ClientError::Unexpected(e)),
        }
    }

    /// Downloads an object into `writer`, chunk by chunk, verifying it as it arrives: an error
    /// means `writer` may have received part of something else (use
    /// [`Client::get_object_to_file`] to get the object whole or nothing).
    pub async fn get_object(
        &self,
        object: &ObjectRef,
        mut writer: impl AsyncWrite + Unpin,
    ) -> Result<(), ClientError> {
        let mut stream = open_request(&self.connection, &Request::GetObject(*object)).await?;
        let _ = stream.send.get_mut().finish();
        match stream.recv.expect().await.map_err(TransportError::from)? {
            Response::Object(announced) if announced == *object => {}
            Response::Error(e) => return Err(ClientError::Refused(e)),
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        let mut incoming = Incoming::new(stream.recv.into_raw(), *object);
        while let Some(chunk) = incoming.chunk().await? {
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| ClientError::Unexpected(format!("cannot write {object}: {e}")))?;
        }
        writer
            .flush()
            .await
            .map_err(|e| ClientError::Unexpected(format!("cannot write {object}: {e}")))?;
        Ok(())
    }

    /// Downloads an object into the file at `path`, which appears only once the whole object
    /// arrived and was verified (a temporary file in the same directory until then).
    pub async fn get_object_to_file(
        &self,
        object: &ObjectRef,
        path: impl AsRef<Path>,
    ) -> Result<(), ClientError> {
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".rgrid-object-")
            .tempfile_in(dir)
            .map_err(|e| io_error(dir, e))?;
        let std_file = temp.reopen().map_err(|e| io_error(temp.path(), e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        self.get_object(object, &mut file).await?;
        file.sync_all()
            .await
            .map_err(|e| io_error(temp.path(), e))?;
        drop(file);
        temp.persist(path).map_err(|e| io_error(path, e.error))?;
        Ok(())
    }

    /// One page of the head's objects, in hash order.
    pub async fn objects_page(&self, query: ObjectQuery) -> Result<ObjectPage, ClientError> {
        match self.call(Request::ListObjects(query)).await? {
            Response::Objects(page) => Ok(page),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Pins a stored object: retention keeps it (also across head restarts) until it is
    /// unpinned. Pinning it again changes nothing; an object the head does not hold is an error
    /// (`NotFound`).
    pub async fn pin(&self, object: &ObjectRef) -> Result<(), ClientError> {
        self.set_pinned(object, true).await
    }

    /// Unpins an object: retention deletes it once it has been unused (and no open task needed
    /// it) for `object_retention` from now.
    pub async fn unpin(&self, object: &ObjectRef) -> Result<(), ClientError> {
        self.set_pinned(object, false).await
    }

    async fn set_pinned(&self, object: &ObjectRef, pinned: bool) -> Result<(), ClientError> {
        let request = Request::PinObject {
            object: *object,
            pinned,
        };
        match self.call(request).await? {
            Response::Pinned { .. } => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Every object the head holds, page by page.
    pub async fn objects(&self) -> Result<Vec<rgrid_core::object::ObjectInfo>, ClientError> {
        let mut objects = Vec::new();
        let mut query = ObjectQuery {
            after: None,
            limit: MAX_PAGE_OBJECTS,
        };
        loop {
            let page = self.objects_page(query.clone()).await?;
            objects.extend(page.objects);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return Ok(objects),
            }
        }
    }
}
