//! Which due transactions this replica scans, and the scanner that resumes them. For now every replica
//! scans every partition; claims are atomic in the store, so replicas never double-claim a row.

pub mod scanner;
