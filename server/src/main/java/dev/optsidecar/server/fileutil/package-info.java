/**
 * File utilities shared by the snapshot store and the step journal, in the style of etcd's
 * {@code fileutil}: {@link dev.optsidecar.server.fileutil.Fsync} (files, directories, "fsync
 * after create or rename"), {@link dev.optsidecar.server.fileutil.Channels} (whole-buffer reads
 * and writes) and {@link dev.optsidecar.server.fileutil.FileTrees} (deleting directory trees).
 * They know nothing of any file format.
 */
package dev.optsidecar.server.fileutil;
