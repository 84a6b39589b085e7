return counts()
