package dev.optsidecar.server.shm;

import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.FileTime;
import java.util.Objects;
import java.util.Set;

/**
 * A client's segment mapped into the server: windows of at most 1 GiB cover the bytes its layout
 * uses. The client owns the file and may shrink, replace or delete it at any moment, so every
 * access first checks that the path still names the file mapped and that it is still large
 * enough, and a fault while copying (a mapped page that vanished, which the JVM reports as an
 * InternalError, raised only at the thread's next native call) becomes that client's
 * FAILED_PRECONDITION, SHARED_MEMORY_FAULT: each copy ends with a native call inside the same try. Accesses and
 * {@link #close} are serialized, so the mapping is never released under a copy.
 */
public final class MappedSegment implements AutoCloseable {
    /** Largest window one MappedByteBuffer maps. */
    static final long WINDOW_BYTES = 1L << 30;

    private final String name;
    private final Path path;
    private final Object fileKey;
    private final FileChannel channel;
    private final SegmentLayout layout;
    private final MappedByteBuffer[] windows;
    private final Runnable onClose;
    private boolean closed;

    private MappedSegment(String name, Path path, Object fileKey, FileChannel channel, SegmentLayout layout,
                          MappedByteBuffer[] windows, Runnable onClose) {
        this.name = name;
        this.path = path;
        this.fileKey = fileKey;
        this.channel = channel;
        this.layout = layout;
        this.windows = windows;
        this.onClose = onClose;
    }

    /**
     * Opens and maps {@code name} in {@code dir}: a regular file (a symbolic link is not followed),
     * large enough for {@code layout}; else FAILED_PRECONDITION, SHARED_MEMORY_UNAVAILABLE.
     */
    static MappedSegment map(Path dir, String name, SegmentLayout layout, String field, Runnable onClose) {
        Path path = dir.resolve(name);
        FileChannel channel = null;
        try {
            BasicFileAttributes attrs = Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (!attrs.isRegularFile()) {
                throw unavailable(field, name, "is not a regular file");
            }
            channel = FileChannel.open(path, Set.of(StandardOpenOption.READ, StandardOpenOption.WRITE,
                    LinkOption.NOFOLLOW_LINKS));
            Object key = attrs.fileKey();
            long size = channel.size();
            if (size < layout.end()) {
                throw unavailable(field, name, String.format("holds %d bytes, but its offsets need %d for this model",
                        size, layout.end()));
            }
            int count = (int) ((layout.end() + WINDOW_BYTES - 1) / WINDOW_BYTES);
            MappedByteBuffer[] windows = new MappedByteBuffer[count];
            for (int w = 0; w < count; w++) {
                long start = w * WINDOW_BYTES;
                windows[w] = channel.map(FileChannel.MapMode.READ_WRITE, start, Math.min(WINDOW_BYTES,
                        layout.end() - start));
            }
            return new MappedSegment(name, path, key, channel, layout, windows, onClose);
        } catch (java.nio.file.NoSuchFileException e) {
            closeQuietly(channel);
            throw unavailable(field, name, "does not exist in the server's --shm-dir");
        } catch (IOException | UnsupportedOperationException e) {
            closeQuietly(channel);
            throw unavailable(field, name, "cannot be opened or mapped: " + e.getMessage());
        } catch (RuntimeException e) {
            closeQuietly(channel);
            throw e;
        }
    }

    private static OptError unavailable(String field, String name, String why) {
        return OptError.precondition("%s: segment '%s' %s", field, Echo.of(name), why)
                .withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE).withField(field + ".name")
                .with("segment", Echo.of(name));
    }

    private static void closeQuietly(FileChannel channel) {
        if (channel != null) {
            try {
                channel.close();
            } catch (IOException ignored) {
                // nothing was mapped from it
            }
        }
    }

    public String name() {
        return name;
    }

    public int tensors() {
        return layout.tensors();
    }

    public long numel(int tensor) {
        return layout.numel(tensor);
    }

    /**
     * Fails with SHARED_MEMORY_FAULT unless the segment's path still names the file mapped, at its
     * full size: a client that deleted, replaced or truncated it gets an error, not stale values.
     */
    public synchronized void verify() {
        checkOpen();
        try {
            BasicFileAttributes attrs = Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (!Objects.equals(attrs.fileKey(), fileKey)) {
                throw fault("was replaced by another file");
            }
        } catch (java.nio.file.NoSuchFileException e) {
            throw fault("was deleted");
        } catch (IOException e) {
            throw fault("cannot be checked: " + e.getMessage());
        }
        checkSize();
    }

    /** Copies the gradient of {@code tensor} from element {@code element} into {@code dst}, filling it. */
    public synchronized void readGradient(int tensor, long element, ByteBuffer dst) {
        read(layout.gradient(tensor) + element * Float.BYTES, dst);
    }

    /** Copies the weights of {@code tensor} from element {@code element} into {@code dst}, filling it. */
    public synchronized void readWeights(int tensor, long element, ByteBuffer dst) {
        read(layout.weights(tensor) + element * Float.BYTES, dst);
    }

    /** Copies {@code src} into the weights of {@code tensor} from element {@code element}. */
    public synchronized void writeWeights(int tensor, long element, ByteBuffer src) {
        checkOpen();
        long position = layout.weights(tensor) + element * Float.BYTES;
        try {
            checkSize();
            while (src.hasRemaining()) {
                MappedByteBuffer window = windows[(int) (position / WINDOW_BYTES)];
                int at = (int) (position % WINDOW_BYTES);
                int n = Math.min(src.remaining(), window.capacity() - at);
                window.put(at, src, src.position(), n);
                src.position(src.position() + n);
                position += n;
            }
            deliverPendingFault();
            checkSize();
        } catch (InternalError e) {
            throw fault("faulted while the server wrote it (was it truncated?)");
        }
    }

    private void read(long position, ByteBuffer dst) {
        checkOpen();
        try {
            checkSize();
            while (dst.hasRemaining()) {
                MappedByteBuffer window = windows[(int) (position / WINDOW_BYTES)];
                int at = (int) (position % WINDOW_BYTES);
                int n = Math.min(dst.remaining(), window.capacity() - at);
                dst.put(dst.position(), window, at, n);
                dst.position(dst.position() + n);
                position += n;
            }
            deliverPendingFault();
            checkSize();
        } catch (InternalError e) {
            throw fault("faulted while the server read it (was it truncated?)");
        }
    }

    /**
     * The JVM raises a fault in a copy from or to a mapping (the InternalError for a SIGBUS) only
     * at the thread's next native call. This one changes nothing, so the fault surfaces here,
     * inside the caller's try, and never inside a JDK method with state to keep (FileChannel.size).
     */
    private void deliverPendingFault() {
        Thread.holdsLock(this);
    }

    private void checkSize() {
        long size;
        try {
            size = channel.size();
        } catch (IOException e) {
            throw fault("cannot be checked: " + e.getMessage());
        }
        if (size < layout.end()) {
            throw fault(String.format("shrank to %d bytes; its offsets need %d", size, layout.end()));
        }
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("segment " + name + " was closed");
        }
    }

    private OptError fault(String what) {
        return OptError.precondition("shared segment '%s' %s; the step was not taken from it", Echo.of(name), what)
                .withReason(OptError.Reason.SHARED_MEMORY_FAULT).with("segment", Echo.of(name));
    }

    /**
     * Unmaps the segment and closes the file; its modification time is set to now (when the path
     * still names it), so that an abandoned segment's grace period counts from its last use.
     */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        closed = true;
        for (MappedByteBuffer w : windows) {
            Unmapper.unmap(w);
        }
        try {
            BasicFileAttributes attrs = Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (Objects.equals(attrs.fileKey(), fileKey)) {
                Files.setLastModifiedTime(path, FileTime.fromMillis(System.currentTimeMillis()));
            }
        } catch (IOException ignored) {
            // gone already: nothing to sweep
        }
        closeQuietly(channel);
        onClose.run();
    }
}
