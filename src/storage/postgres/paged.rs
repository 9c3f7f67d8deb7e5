//! Listings read a page at a time (keyset paging): [`Paged`] and the page
//! readers the listings share. Uses only `rows.rs`.

use postgres::Row;

use super::rows::{entry_of, id_of};
use crate::error::Result;
use crate::ids::DeliveryId;
use crate::storage::{IndexEntry, Iter};

/// Rows fetched per page by listings.
pub(super) const PAGE: i64 = 512;

/// A page of delivery ids, each its own cursor.
pub(super) fn id_page(rows: &[Row]) -> Result<Vec<(Result<DeliveryId>, Vec<u8>)>> {
    rows.iter()
        .map(|row| {
            let id = id_of(row, "id", DeliveryId::from_slice)?;
            Ok((Ok(id), id.to_bytes().to_vec()))
        })
        .collect()
}

/// A page of index entries, each its own cursor.
pub(super) fn entry_page(rows: &[Row]) -> Result<Vec<(Result<IndexEntry>, IndexEntry)>> {
    rows.iter()
        .map(|row| {
            let e = entry_of(row)?;
            Ok((Ok(e), e))
        })
        .collect()
}

/// Reads the page after a cursor: the rows, each with its own cursor; a
/// row whose record does not decode is an `Err` item, and the listing
/// goes on after it.
type PageFn<T, C> = Box<dyn FnMut(Option<&C>) -> Result<Vec<(Result<T>, C)>> + Send>;

/// A listing read a page at a time (keyset paging): `next_page` gets the
/// last row's cursor and returns the next rows.
pub(super) struct Paged<T, C> {
    page: std::vec::IntoIter<Result<T>>,
    cursor: Option<C>,
    done: bool,
    next_page: PageFn<T, C>,
}

impl<T: Send + 'static, C: Send + 'static> Paged<T, C> {
    pub(super) fn boxed(
        next_page: impl FnMut(Option<&C>) -> Result<Vec<(Result<T>, C)>> + Send + 'static,
    ) -> Iter<T> {
        Box::new(Paged {
            page: Vec::new().into_iter(),
            cursor: None,
            done: false,
            next_page: Box::new(next_page),
        })
    }
}

impl<T, C> Iterator for Paged<T, C> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if let Some(x) = self.page.next() {
            return Some(x);
        }
        if self.done {
            return None;
        }
        match (self.next_page)(self.cursor.as_ref()) {
            Ok(rows) => {
                if (rows.len() as i64) < PAGE {
                    self.done = true;
                }
                let mut items = Vec::with_capacity(rows.len());
                for (item, cursor) in rows {
                    self.cursor = Some(cursor);
                    items.push(item);
                }
                self.page = items.into_iter();
                self.page.next()
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
