// Cross-checks host/src/sinks/smb/testdata/bucket-vectors.tsv against Guava itself
// (the hash library Beam SMB uses). Usage, with Java 17 and Guava from Maven Central:
//   curl -sfLO https://repo1.maven.org/maven2/com/google/guava/guava/33.5.0-jre/guava-33.5.0-jre.jar
//   java -cp guava-33.5.0-jre.jar scripts/SmbVectorsGuava.java host/src/sinks/smb/testdata/bucket-vectors.tsv
import com.google.common.hash.Hashing;
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;

public class SmbVectorsGuava {
  static byte[] nested(String k) {
    byte[] b = k.getBytes(StandardCharsets.UTF_8);
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    int n = b.length;
    while ((n & ~0x7F) != 0) { out.write((n & 0x7F) | 0x80); n >>>= 7; }
    out.write(n);
    out.write(b, 0, b.length);
    return out.toByteArray();
  }
  public static void main(String[] a) throws Exception {
    int bad = 0, n = 0;
    for (String line : Files.readAllLines(Paths.get(a[0]))) {
      if (line.startsWith("#")) continue;
      String[] f = line.split("\t");
      String key = f[0].substring(1, f[0].length() - 1);  // vectors use no JSON escapes
      byte[] e = nested(key);
      int h32 = Hashing.murmur3_32().hashBytes(e).asInt();
      int h128 = Hashing.murmur3_128().hashBytes(e).asInt();
      int b32 = Math.abs(h32) % 8, b128 = Math.abs(h128) % 8;
      n++;
      if (h32 != Integer.parseInt(f[1]) || h128 != Integer.parseInt(f[2]) || b32 != Integer.parseInt(f[3]) || b128 != Integer.parseInt(f[4])) {
        bad++; System.out.println("MISMATCH " + line + " java: " + h32 + " " + h128);
      }
    }
    System.out.println(n + " vectors, " + bad + " mismatches against Guava");
  }
}
