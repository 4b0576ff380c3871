package dev.optsidecar.server.fileutil;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;

/** Whole-buffer reads and writes: a file channel may move fewer bytes than asked in one call. */
public final class Channels {
    private Channels() {}

    /** Writes all of {@code src} at the channel's position; returns how many bytes that was. */
    public static long writeFully(FileChannel ch, ByteBuffer src) throws IOException {
        long n = src.remaining();
        while (src.hasRemaining()) {
            ch.write(src);
        }
        return n;
    }

    /** Fills {@code dst} from {@code position} on; an EOFException if the file ends first. */
    public static void readFully(FileChannel ch, ByteBuffer dst, long position) throws IOException {
        long at = position;
        while (dst.hasRemaining()) {
            int n = ch.read(dst, at);
            if (n < 0) {
                throw new EOFException("unexpected end of file at byte " + at);
            }
            at += n;
        }
    }
}
